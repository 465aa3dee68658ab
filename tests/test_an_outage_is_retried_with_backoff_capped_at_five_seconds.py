"""While Redis is unreachable, a control-plane call retries after 0.1 s, doubling up to 5 s and no more, so a
server that comes back is seen within 5 s however long the outage was; at the outage timeout the call gives up
with one error that names the address and how long it waited. The clock is virtual (the connection module's
own `time`), so the 60 s outage costs no test time; Redis is really unreachable (a port nothing listens on)."""

from __future__ import annotations

import socket

import pytest

from flexgrpo.control_plane import ControlPlane, ControlPlaneUnavailable
from flexgrpo.control_plane import connection as connection_module


class VirtualClock:
    """`monotonic` and `sleep` for the connection module: a sleep advances the clock and is recorded."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when this returns: a connection is refused at once


def test_an_outage_is_retried_with_backoff_doubling_to_five_seconds(monkeypatch):
    clock = VirtualClock()
    monkeypatch.setattr(connection_module, "time", clock)
    address = f"127.0.0.1:{closed_port()}"
    control = ControlPlane(f"redis://{address}/0", "down", outage_timeout_s=60)

    with pytest.raises(ControlPlaneUnavailable, match=rf"Redis at {address} unreachable for 60 s \(run 'down'\)"):
        control.run_info()

    assert clock.sleeps[:7] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert max(clock.sleeps) == 5.0 and clock.sleeps[7:-1] == [5.0] * (len(clock.sleeps) - 8)
    assert sum(clock.sleeps) == pytest.approx(60.0)  # the last wait is cut to the timeout

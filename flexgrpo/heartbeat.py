"""What every role inherits to write its own heartbeat into the run's Redis (see `control_plane.heartbeats`)."""

from __future__ import annotations

import socket
import time
import uuid
from urllib.parse import urlsplit

from flexgrpo.control_plane.heartbeats import Heartbeat

FIRST_BEAT_WAIT_S = 5.0  # how long a starting worker tries its first beat (a Redis restarting meanwhile comes back)
PROCESS_INCARNATION = uuid.uuid4().hex  # this process's own: an actor Ray restarted answers with a new one


class HeartbeatUnreachable(ConnectionError):
    """A worker cannot write its heartbeat to the run's Redis (on another host: an address it cannot reach)."""


class Heartbeating:
    """Mixin of the role classes: after `start_heartbeat`, a daemon thread of the worker's own process beats."""

    _heartbeat: Heartbeat | None = None

    def incarnation(self) -> str:
        """Answers once the actor is up, with a token of its process: a worker pool tells an actor that Ray
        restarted since it joined (its heartbeat, weights and reward spec lost) from one that never died."""
        return PROCESS_INCARNATION

    def start_heartbeat(self, redis_url: str, run: str, name: str) -> None:
        """(Re)start this worker's heartbeat under `name` (e.g. rollout-0); a restarted actor calls it again.
        Raises HeartbeatUnreachable, naming the worker, its host and the address, when no first beat lands within
        FIRST_BEAT_WAIT_S."""
        import redis

        if self._heartbeat is not None:
            self._heartbeat.stop()
        deadline = time.monotonic() + FIRST_BEAT_WAIT_S
        while True:
            try:
                self._heartbeat = Heartbeat(redis_url, run, name).start()
                return
            except redis.RedisError as err:
                if time.monotonic() >= deadline:
                    address = urlsplit(redis_url).netloc.rpartition("@")[2]  # no password in messages
                    raise HeartbeatUnreachable(
                        f"{name} on host {socket.gethostname()} cannot write its heartbeat to the run's Redis at "
                        f"{address}: {err}"
                    ) from None
            time.sleep(0.5)

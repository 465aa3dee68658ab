"""kill -9 of the embedded redis-server: the control plane waits with backoff, `on_outage` restarts the server from
its append-only file, and the run goes on with its data intact; a too-long outage ends in one clear error."""

import threading
import time

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane, ControlPlaneUnavailable


def kill_9(server: EmbeddedRedis) -> None:
    server.process.kill()
    server.process.wait()


def test_on_outage_restarts_the_server_from_its_aof_and_the_ledger_goes_on(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    restarts = []

    def restart() -> None:
        restarts.append(time.monotonic())
        server.restart()

    try:
        control = ControlPlane(url, "outage", on_outage=restart, outage_timeout_s=30)
        control.register_run({"run": {"name": "outage"}})
        control.ledger_queue(["g1", "g2"])
        control.ledger_sampled("g1", "rollout-0", 0)
        control.ledger_scored("g1", 0)
        old_pid = server.process.pid
        kill_9(server)
        control.ledger_commit_step(0, ["g1"])  # waits out the outage, then commits
        assert len(restarts) == 1 and server.process.pid != old_pid
        states = control.ledger_states()
        assert states["g1"]["state"] == "trained" and states["g2"]["state"] == "queued"
        assert control.run_info()["step"] == "1" and "config" in control.run_info()
    finally:
        server.stop()


def test_a_call_blocks_until_the_server_is_back(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    comeback = threading.Timer(1.0, server.restart)
    try:
        control = ControlPlane(url, "outage", outage_timeout_s=30)
        control.update_run(status="running")
        kill_9(server)
        comeback.start()
        start = time.monotonic()
        assert control.run_info()["status"] == "running"
        assert 0.9 < time.monotonic() - start < 5
    finally:
        comeback.join()
        server.stop()


def test_an_outage_longer_than_the_timeout_is_one_clear_error(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    kill_9(server)
    restarts = []
    control = ControlPlane(url, "outage", on_outage=lambda: restarts.append(1), outage_timeout_s=5)
    control.on_outage, control.outage_timeout_s = None, 0.5  # what an ending job sets (driver.py): both take effect
    start = time.monotonic()
    with pytest.raises(ControlPlaneUnavailable, match=rf"Redis at 127.0.0.1:{server.port} unreachable for") as err:
        control.update_run(status="running")
    assert 0.5 <= time.monotonic() - start < 2 and restarts == []
    assert server.password not in str(err.value)


def test_threads_hit_by_one_outage_restart_the_server_once(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    restarts = []

    def restart() -> None:
        restarts.append(threading.current_thread().name)
        server.restart()

    try:
        control = ControlPlane(url, "outage", on_outage=restart, outage_timeout_s=30)
        control.update_run(status="running")
        kill_9(server)
        readers = [threading.Thread(target=control.run_info, name=f"reader-{i}") for i in range(4)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        assert len(restarts) == 1 and control.run_info()["status"] == "running"
    finally:
        server.stop()

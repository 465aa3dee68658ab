"""One owner per run (a Redis lease with a TTL) and heartbeats written by the workers themselves, in a real Redis."""

import os
import socket
import time

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane, Heartbeat, RunOwnedError

FIRST = {"host": "node-a", "pid": 111, "started": 1.0}
SECOND = {"host": "node-b", "pid": 222, "started": 2.0}


@pytest.fixture
def redis_url(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        yield url


def test_a_live_lease_refuses_a_second_owner_and_expires_into_a_takeover(redis_url):
    control = ControlPlane(redis_url, "leased")
    control.register_run({})
    control.update_run(status="running")
    control.acquire_lease(FIRST, ttl_s=0.6)
    control.renew_lease(FIRST, ttl_s=0.6)
    assert control.lease()["owner"] == FIRST and 0 < control.lease()["ttl_s"] <= 0.6
    assert control.status()["status"] == "running"
    with pytest.raises(RunOwnedError, match=r"owned by pid 111 on host node-a \(lease renewed [\d.]+ s ago, at "):
        ControlPlane(redis_url, "leased").acquire_lease(SECOND, ttl_s=5)
    time.sleep(0.8)
    assert control.lease() is None
    status = control.status()
    assert status["status"] == "lost" and " s ago, at " in status["last_beat"] and status["lease"] is None
    control.acquire_lease(SECOND, ttl_s=5)  # the first owner's lease expired: takeover
    with pytest.raises(RunOwnedError, match="owned by pid 222 on host node-b"):
        control.renew_lease(FIRST, ttl_s=5)  # the old owner learns it lost the run
    control.release_lease(FIRST)  # not the holder: nothing happens
    assert control.lease()["owner"] == SECOND
    control.release_lease(SECOND)
    assert control.lease() is None


def test_finished_runs_stay_finished_without_a_lease(redis_url):
    control = ControlPlane(redis_url, "done")
    control.register_run({})
    assert control.status()["status"] == "lost"  # "starting" needs a live owner too
    control.update_run(status="finished")
    assert control.status()["status"] == "finished" and "last_beat" not in control.status()


def test_workers_beat_for_themselves_and_survive_a_redis_outage(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    try:
        control = ControlPlane(url, "beats")
        beat = Heartbeat(url, "beats", "rollout-0", period_s=0.1).start()
        time.sleep(0.3)
        assert control.heartbeats()["rollout-0"]["pid"] == os.getpid()
        assert control.heartbeats()["rollout-0"]["host"] == socket.gethostname()
        assert control.heartbeats()["rollout-0"]["age_s"] < 0.5
        server.process.kill()  # Redis gone: the beating thread must live on
        server.process.wait()
        time.sleep(0.5)
        assert beat._thread.is_alive()
        server.restart()
        time.sleep(0.5)
        assert control.heartbeats()["rollout-0"]["age_s"] < 0.5  # beats again after the restart
        beat.stop()
        assert not beat._thread.is_alive()
    finally:
        server.stop()

"""Multi-host truth for the control plane: a job on a cluster hands its workers a Redis address another host can
reach (the node's cluster IP, not loopback); a worker that cannot reach it says so in one line at start, and a
heartbeat that stops landing later says so in the worker's log once (and once when it lands again)."""

import logging
import time

import pytest
import redis

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import Heartbeat
from flexgrpo.control_plane.keys import heartbeats
from flexgrpo.heartbeat import Heartbeating, HeartbeatUnreachable
from flexgrpo.net import node_ip


class Worker(Heartbeating):
    pass


@pytest.fixture(scope="module")
def ip():
    address = node_ip()
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    return address


def test_a_worker_writes_its_heartbeat_to_the_redis_on_the_node_ip(tmp_path, ip):
    with EmbeddedRedis(tmp_path / "redis", host=ip) as url:
        assert f"@{ip}:" in url and "127.0.0.1" not in url
        worker = Worker()
        worker.start_heartbeat(url, "run", "rollout-0")
        beat = redis.Redis.from_url(url, decode_responses=True).hget(heartbeats("run"), "rollout-0")
        assert beat is not None and '"pid"' in beat
        worker._heartbeat.stop()
        loopback = url.replace(f"@{ip}:", "@127.0.0.1:")  # the operator's CLI on the head still gets in
        assert redis.Redis.from_url(loopback).ping()


def test_a_worker_that_cannot_reach_the_redis_says_so_in_one_line(tmp_path, ip):
    """What a second host met: a Redis on loopback only, asked for by the node's address."""
    with EmbeddedRedis(tmp_path / "redis") as url:  # loopback only
        remote_view = url.replace("@127.0.0.1:", f"@{ip}:")
        start = time.monotonic()
        with pytest.raises(HeartbeatUnreachable) as err:
            Worker().start_heartbeat(remote_view, "run", "reward-0")
        assert time.monotonic() - start < 15
        message = str(err.value)
        assert message.startswith("reward-0 on host ") and f"the run's Redis at {ip}:" in message
        assert "\n" not in message and url.split("@")[0].split(":")[-1] not in message  # no password


def test_a_heartbeat_that_stops_landing_logs_it_once_and_once_when_it_lands_again(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="flexgrpo")
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    beat = Heartbeat(url, "run", "learner-0", period_s=0.05).start()
    try:
        server.stop()
        time.sleep(1.0)  # ~20 beats fail
        failing = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(failing) == 1 and "learner-0" in failing[0].getMessage()
        server.restart()
        time.sleep(1.0)
        again = [r for r in caplog.records if "writes to the run's Redis again" in r.getMessage()]
        assert len(again) == 1
        assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
    finally:
        beat.stop()
        server.stop()


def test_a_ray_client_job_needs_a_redis_url_and_says_so():
    from flexgrpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"cluster.address 'ray://head:10001' is a Ray Client address: .* set "):
        load_config(None, ["cluster.address=ray://head:10001"])
    cfg = load_config(None, ["cluster.address=ray://head:10001", "cluster.redis_url=redis://head:6379/0"])
    assert cfg.cluster.redis_url == "redis://head:6379/0"

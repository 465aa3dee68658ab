"""A job whose start fails after some pools were placed (here the learner finds no room) removes what it placed:
on a shared cluster, or in the next job of the same Ray session, a leftover placement group named `rollout-0`
would stop the next start."""

from __future__ import annotations

import time

import pytest
import ray

from cluster.ray_cluster import PoolUnplaced
from orchestration.roles import build_roles
from tests.conftest import tiny_config


def _all_gpus_free(timeout_s: float = 60.0) -> None:
    """Wait until the session's GPUs are free: the pools of the test before may still be being removed (Ray frees
    a removed placement group's resources shortly after), and a learner placed ahead of them would leave the
    rollout or reward pool waiting for room instead of this start failing."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("GPU", 0) < ray.cluster_resources()["GPU"]:
        assert time.monotonic() < deadline, f"GPUs still held after {timeout_s:.0f} s: {ray.available_resources()}"
        time.sleep(0.2)


def test_a_learner_without_room_leaves_no_rollout_or_reward_pool_behind(ray_local):
    _all_gpus_free()
    before = set(ray.util.placement_group_table())
    cfg = tiny_config("cluster.num_gpus=4", "cluster.learner.gpus_per_worker=2", "cluster.learner_wait_s=2")
    with pytest.raises(PoolUnplaced, match="learner pool"):  # the session's Ray has 3 GPUs: 1 + 1 + 2 do not fit
        build_roles(cfg)
    placed = {pg_id: pg for pg_id, pg in ray.util.placement_group_table().items() if pg_id not in before}
    assert {pg["name"] for pg in placed.values()} >= {"rollout-0", "reward-0"}  # the start got that far
    assert {pg["name"]: pg["state"] for pg in placed.values() if pg["state"] != "REMOVED"} == {}

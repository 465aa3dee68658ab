"""A worker whose call failed may already be back when the driver checks it (Ray restarts a pool actor at once;
a small one is up again in seconds). It answers, but it is a new process: no heartbeat, no weights, no
hot-swapped reward spec. The pool tells it by its incarnation and it joins again like a lost worker, counted as
a recovery; before, it was taken for one that never died (a CI rehearsal's kill test waited for that recovery)."""

from __future__ import annotations

import time

import pytest
import ray

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


def test_a_reward_worker_restarted_before_the_check_joins_again_with_its_heartbeat(ray_local, tmp_path):
    cfg = tiny_config(f"run.output_dir={tmp_path}", "run.name=again")
    with trainer(cfg, tmp_path / "again") as run:
        pool, control = run.roles.reward, run.control
        first_pid = int(control.heartbeats()["reward-0"]["pid"])
        ray.kill(pool.actor(0), no_restart=False)
        deadline = time.monotonic() + 120
        while True:  # the restarted actor answers before anyone asked how it is
            try:
                ray.get(pool.actor(0).incarnation.remote())
                break
            except ray.exceptions.RayActorError:
                assert time.monotonic() < deadline, "reward-0 was not restarted"
                time.sleep(0.5)
        run.recovery.workers_lost({"reward": {0}})  # what a failed scoring call leads to
        assert run.recovery.count == 1 and pool.live == []
        while pool.live != [0]:  # it joins again: the reward spec, its heartbeat
            assert time.monotonic() < deadline, "reward-0 did not join again"
            run.recovery.poll_pools()
            time.sleep(0.2)
        beat = control.heartbeats()["reward-0"]
        assert int(beat["pid"]) != first_pid and pool.check(0)

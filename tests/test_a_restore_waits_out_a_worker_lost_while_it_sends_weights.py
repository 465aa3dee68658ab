"""A restore (the job's start from a checkpoint, or a learner's recovery) sends the restored weights and waits
until every rollout worker holds them. A worker lost meanwhile is recovered from (taken out of its pool, the
weights sent again to the live ones), not an error that ends the job."""

from __future__ import annotations

import pytest
import ray

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


def test_a_rollout_worker_killed_before_a_restore_costs_one_recovery(ray_local, tmp_path):
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=restore",
        "cluster.rollout.num_workers=2",
        "cluster.rollout.gpus_per_worker=0.5",
    )
    with trainer(cfg, tmp_path / "restore") as run:
        run.restore(None)
        ray.kill(run.roles.rollout.actor(1), no_restart=True)  # gone for good, as with its node
        run.restore(None)
        assert run.recovery.count == 1 and run.roles.rollout.live == [0]
        assert not run.weights.receiving  # every live worker received the restored weights
        assert ray.get(run.roles.rollout.actor(0).ready.remote()) is not None

"""A rollout worker killed after a few trained steps comes back (Ray restarts it) with the constructor's weights,
version 0. The pipeline sees its group lost, the recovery rebuilds the weight-sync group and resends the current
weights: the restarted worker must hold exactly the learner's parameters, and the first group it samples (the lost
one, queued again) must carry the learner's current version and train on-policy. The weights go through a ring of
two buckets (the LoRA in several), the publish that holds no whole copy."""

from __future__ import annotations

import os

import pytest
import ray
import torch

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow

STEPS_BEFORE = 3


def pid_of(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_restarted_rollout_worker_holds_and_samples_the_learners_current_weights(ray_local, tmp_path):
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=restart",
        "run.num_steps=8",
        "grpo.groups_per_step=1",
        "grpo.group_size=4",
        "learner.lr=0.05",  # every step moves the weights visibly: a stale worker cannot pass for a current one
        "holds.rollout_s=1.5",  # a group stays in flight long enough for the kill to land while it is sampled
        "learner.sync_snapshot=none",
        "learner.sync_bucket_mb=0.01",
    )
    with trainer(cfg, tmp_path) as t:
        t.restore(None)
        worker, learner = t.roles.rollout.actors[0], t.roles.learner.actors[0]
        pid = pid_of(worker)  # now, while no group is admitted (the call would queue behind a group)
        for _ in range(STEPS_BEFORE):
            t.train_one_step()
        assert t.version == STEPS_BEFORE and t.recovery.count == 0

        # the step's end admitted the next group: kill its worker while it samples
        (lost,) = t.pipeline.inflight.values()
        assert not ray.wait([lost.trajectory], timeout=0)[0], "the group finished before the kill: raise the hold"
        ray.kill(worker, no_restart=False)

        batch = t.pipeline.take(1, t.version)  # sees the group lost, recovers, samples it again
        assert t.recovery.count == 1
        assert pid_of(worker) != pid  # a new process: it started from the constructor's weights
        assert batch[0].group.group_id == lost.group.group_id  # the lost group, queued again (same id and seed)
        assert batch[0].scored.policy_version == t.version == STEPS_BEFORE

        learner_state = ray.get(learner.trainable_state.remote())
        worker_state = ray.get(worker.trainable_state.remote())
        assert worker_state.keys() == learner_state.keys()
        assert all(torch.equal(worker_state[n], learner_state[n]) for n in learner_state)
        assert ray.get(worker.ready.remote()) == t.version

        trained = t.train(batch)  # the learner re-scores the restarted worker's transitions: exactly on-policy
        assert trained.version == STEPS_BEFORE + 1
        assert trained.metrics["loss/ratio_max_dev"] < 1e-5

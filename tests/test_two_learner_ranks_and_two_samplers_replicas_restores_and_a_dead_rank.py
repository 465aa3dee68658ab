"""Two data-parallel DeepSpeed learner ranks and a rollout pool of two samplers, through real Ray. The tests share
one set of roles (a module-scoped trainer) and run in file order, the ones that kill a process last: the replicas
stay identical and reach both samplers bit for bit; a restore waits out a sampler lost while it sends weights; a
dead rank is seen while the other is busy."""

from __future__ import annotations

import time

import pytest
import ray
import torch

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("two_ranks")
    cfg = tiny_config(
        f"run.output_dir={root}",
        "run.name=dp",
        "grpo.groups_per_step=2",
        "grpo.group_size=4",
        "cluster.learner.num_workers=2",
        "cluster.learner.gpus_per_worker=0.5",
        "cluster.rollout.num_workers=2",
        "cluster.rollout.gpus_per_worker=0.5",
        "learner.lr=0.05",
        "learner.zero_stage=2",
        "holds.checkpoint_s=120",  # longer than the 60 s a busy rank is given to answer (the last test)
    )
    with trainer(cfg, root / "dp") as t:
        yield t


def test_two_learner_ranks_keep_identical_replicas_and_two_samplers_get_them(run):
    """After a step the ZeRO-2 ranks agree, and a publish makes both samplers equal to them bit for bit; the
    next groups are sampled with the new version."""
    roles = run.roles
    run.restore(None)
    run.pipeline.admit(0)
    batch = run.pipeline.take(2, learner_version=0)
    assert [g.group.group_id for g in batch] == ["g000000", "g000001"]
    assert {g.rollout_worker for g in batch} == {0, 1}  # one group per sampler
    assert all(g.scored.rewards.shape == (4,) and g.scored.reward_version == 0 for g in batch)
    trajectories = ray.get([g.trajectory for g in batch])
    assert not set(trajectories[0].seeds) & set(trajectories[1].seeds)
    trained = run.train(batch)
    assert trained.metrics["loss/micro_batches"] > 0 and trained.version == 1
    rank0, rank1 = ray.get([a.trainable_state.remote() for a in roles.learner.actors])
    initial = ray.get(roles.rollout.actors[0].trainable_state.remote())
    assert any(not torch.equal(rank0[n], initial[n]) for n in rank0), "the update moved the weights"
    assert all(torch.equal(rank0[n], rank1[n]) for n in rank0), "ZeRO-2 ranks must agree after a step"
    run.pipeline.trained(batch, step=0)
    run.version = trained.version
    run.weights.publish()
    assert ray.get(run.weights.receiving) == [1, 1]  # the version each worker now holds
    for sampler in ray.get([w.trainable_state.remote() for w in roles.rollout.actors]):
        assert sampler.keys() == rank0.keys()
        assert all(torch.equal(rank0[n], sampler[n]) for n in rank0), "every sampler gets the new weights"
    run.pipeline.admit(1)
    assert [g.scored.policy_version for g in run.pipeline.take(2, learner_version=1)] == [1, 1]


def test_a_rollout_worker_killed_before_a_restore_costs_one_recovery(run):
    """A restore (the job's start from a checkpoint, or a learner's recovery) sends the restored weights and waits
    until every rollout worker holds them. A worker lost meanwhile is recovered from (taken out of its pool, the
    weights sent again to the live ones), not an error that ends the job."""
    run.restore(None)
    recoveries = run.recovery.count
    ray.kill(run.roles.rollout.actor(1), no_restart=True)  # gone for good, as with its node
    run.restore(None)
    assert run.recovery.count == recoveries + 1 and run.roles.rollout.live == [0]
    assert not run.weights.receiving  # every live worker received the restored weights
    assert ray.get(run.roles.rollout.actor(0).ready.remote()) is not None


def test_rank_1_killed_while_rank_0_is_held_in_a_checkpoint(run, tmp_path):
    """With several learner ranks, the death of one is seen even while another is busy (in a collective that waits
    for the dead one, or, here, held in a checkpoint): the ranks are asked at once, not one after the other. Asked
    in turn, the busy rank 0 went first; its answer timed out and that error ended the job."""
    rank_0, rank_1 = run.roles.learner.actors
    saving = [rank.save_checkpoint.remote(str(tmp_path / "ckpt")) for rank in (rank_0, rank_1)]
    time.sleep(5)  # both ranks inside the checkpoint's hold
    assert ray.wait(saving, timeout=0)[0] == []
    ray.kill(rank_1, no_restart=True)
    start = time.monotonic()
    assert run.recovery.learner_died()
    assert time.monotonic() - start < 30

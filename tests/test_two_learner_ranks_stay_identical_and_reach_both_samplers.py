"""A data-parallel DeepSpeed learner of two ranks whose replicas stay identical and reach both samplers of a
two-worker rollout pool bit for bit (the next groups are sampled with them), through real Ray."""

import pytest
import ray
import torch

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


def test_two_learner_ranks_keep_identical_replicas_and_two_samplers_get_them(ray_local, tmp_path):
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=dp",
        "grpo.groups_per_step=2",
        "grpo.group_size=4",
        "cluster.learner.num_workers=2",
        "cluster.learner.gpus_per_worker=0.5",
        "cluster.rollout.num_workers=2",
        "cluster.rollout.gpus_per_worker=0.5",
        "learner.lr=0.05",
        "learner.zero_stage=2",
    )
    with trainer(cfg, tmp_path) as t:
        roles = t.roles
        t.restore(None)
        t.pipeline.admit(0)
        batch = t.pipeline.take(2, learner_version=0)
        assert [g.group.group_id for g in batch] == ["g000000", "g000001"]
        assert {g.rollout_worker for g in batch} == {0, 1}  # one group per sampler
        assert all(g.scored.rewards.shape == (4,) and g.scored.reward_version == 0 for g in batch)
        trajectories = ray.get([g.trajectory for g in batch])
        assert not set(trajectories[0].seeds) & set(trajectories[1].seeds)
        trained = t.train(batch)
        assert trained.metrics["loss/micro_batches"] > 0 and trained.version == 1
        rank0, rank1 = ray.get([a.trainable_state.remote() for a in roles.learner.actors])
        initial = ray.get(roles.rollout.actors[0].trainable_state.remote())
        assert any(not torch.equal(rank0[n], initial[n]) for n in rank0), "the update moved the weights"
        assert all(torch.equal(rank0[n], rank1[n]) for n in rank0), "ZeRO-2 ranks must agree after a step"
        t.pipeline.trained(batch, step=0)
        t.version = trained.version
        t.weights.publish()
        assert ray.get(t.weights.receiving) == [1, 1]  # the version each worker now holds
        for sampler in ray.get([w.trainable_state.remote() for w in roles.rollout.actors]):
            assert sampler.keys() == rank0.keys()
            assert all(torch.equal(rank0[n], sampler[n]) for n in rank0), "every sampler gets the new weights"
        t.pipeline.admit(1)
        assert [g.scored.policy_version for g in t.pipeline.take(2, learner_version=1)] == [1, 1]

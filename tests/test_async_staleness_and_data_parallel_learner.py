"""Asynchronous GRPO (actors one version ahead of the learner), and a data-parallel DeepSpeed learner of two
ranks whose replicas stay identical and reach both samplers of a two-worker rollout pool, through real Ray."""

import json

import pytest
import ray
import torch

from orchestration.driver import train
from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


def test_max_staleness_one_trains_on_data_one_version_old(ray_local, tmp_path):
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=async",
        "run.num_steps=4",
        "grpo.max_staleness=1",
        "grpo.groups_per_step=1",
        "grpo.group_size=4",
        "learner.lr=0.05",
    )
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "async" / "metrics.jsonl").read_text().splitlines()]
    staleness = [r["offpolicy/staleness_max"] for r in rows]
    # versions at training time: step 0 trains v0 data at v0; afterwards the data is one version behind
    assert staleness[0] == 0 and max(staleness) == 1 and all(s <= 1 for s in staleness)
    stale = [r for r in rows if r["offpolicy/staleness_max"] == 1]
    assert all(abs(r["loss/ratio_mean"] - 1) > 1e-7 for r in stale), "stale data is off-policy: ratio != 1"
    assert rows[0]["loss/ratio_max_dev"] < 1e-5  # the first step is on-policy


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
        trajectories = ray.get([g.trajectory for g in batch])
        assert not set(trajectories[0].seeds) & set(trajectories[1].seeds)
        trained = t.train(batch)
        assert trained.metrics["loss/micro_batches"] > 0
        rank0, rank1 = ray.get([a.trainable_state.remote() for a in roles.learner.actors])
        initial = ray.get(roles.rollout.actors[0].trainable_state.remote())
        assert any(not torch.equal(rank0[n], initial[n]) for n in rank0), "the update moved the weights"
        assert all(torch.equal(rank0[n], rank1[n]) for n in rank0), "ZeRO-2 ranks must agree after a step"
        t.weights.publish()
        ray.get(t.weights.receiving)
        for sampler in ray.get([w.trainable_state.remote() for w in roles.rollout.actors]):
            assert all(torch.equal(rank0[n], sampler[n]) for n in rank0), "every sampler gets the new weights"

"""A slowed rollout worker (a hold in its sampler): the learner still steps on the fast worker's groups, no
group is trained more than max_staleness versions after the policy that sampled it, and the ledger shows it."""

import json

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane
from orchestration.driver import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_learner_steps_past_a_slow_worker_within_the_staleness_bound(ray_local, tmp_path):
    steps = 8
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=slow",
        f"run.num_steps={steps}",
        "grpo.groups_per_step=2",
        "grpo.group_size=4",
        "grpo.max_staleness=1",
        "cluster.rollout.num_workers=2",
        "cluster.rollout.gpus_per_worker=0.5",
        "holds.rollout_s=4.0",
        "holds.rollout_workers=[1]",
    )
    summary = train(cfg)
    assert summary.status == "finished" and summary.steps == steps
    rows = [json.loads(line) for line in (tmp_path / "slow" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["offpolicy/staleness_max"] for r in rows) <= 1

    with EmbeddedRedis(tmp_path / "slow" / "redis") as url:
        ledger = ControlPlane(url, "slow").ledger_states()
    trained = [g for g in ledger.values() if g["state"] == "trained"]
    assert len(trained) == 2 * steps
    assert all(g["step"] - g["policy_version"] <= 1 for g in trained), "trained at most 1 version late"
    by_worker = {w: sum(g["worker"] == w for g in trained) for w in ("rollout-0", "rollout-1")}
    assert by_worker["rollout-0"] > by_worker["rollout-1"], f"the fast worker carries the run: {by_worker}"

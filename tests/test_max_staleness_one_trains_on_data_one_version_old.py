"""Asynchronous GRPO: rollout workers sample one version ahead of the learner, so after the first step the
learner trains on data one version old (off-policy, its ratio away from 1), never older than max_staleness."""

import json

import pytest

from orchestration.driver import train
from tests.conftest import tiny_config

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

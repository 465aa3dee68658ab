"""configs/tiny_flex.yaml runs as a user runs it: `make train ARGS=...` (the README's command, which runs
`flexgrpo train`) from a shell with no environment variable of ours (only PATH and HOME), the tiny Flex judge on
an in-process vLLM-CPU engine (on the reward pool) that sizes its KV cache itself scores real rollout groups: every
pair of each group judged, structured output so every reply parses, win-rate rewards."""

import json

import pytest

from tests.user_shell import run_in_clean_shell

pytestmark = pytest.mark.slow


def test_tiny_flex_recipe_trains_with_the_judge_from_a_clean_shell(tmp_path):
    G = 4
    args = [
        "configs/tiny_flex.yaml",
        f"run.output_dir={tmp_path}",
        "run.num_steps=2",
        "grpo.groups_per_step=1",
        "eval.every=0",  # the evaluation has tests of its own; this one is about the judge starting here
        "eval.before_training=false",
    ]
    run_in_clean_shell(["make", "train", f"ARGS={' '.join(args)}"])
    rows = [json.loads(line) for line in (tmp_path / "tiny_flex" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["reward/requests"] >= G * (G - 1) // 2 and row["reward/unparsed"] == 0  # retries would add more
        assert row["reward/parse_rate"] == 1.0 and "reward/unifiedreward_flex" in row
        assert 0.0 <= row["reward_mean"] <= 1.0  # win-rate based rewards
    judgements = json.loads((tmp_path / "tiny_flex" / "samples" / "step_00000.judgements.json").read_text())
    pairs = [d for group in judgements.values() for d in group if d["kind"] == "pair"]
    assert len(pairs) == G * (G - 1) // 2 and all(d["parsed"] for d in pairs)

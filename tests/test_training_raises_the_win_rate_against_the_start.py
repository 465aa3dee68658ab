"""Training visibly changes what a judge prefers: the tiny recipe trains on JPEG compressibility and each evaluation
judges its ODE samples against the starting policy's (same prompts and seeds) with a pairwise judge that prefers
the smaller JPEG, and one that prefers the larger. Before training the policy meets itself (0.5); after, the first
wins clearly and the second loses. (A resumed job judges against the starting samples kept in the run directory:
test_checkpoint_resume_is_exact.py.)"""

import json

import pytest
from PIL import Image
from safetensors.torch import load_file

from orchestration.driver import train
from orchestration.reporting import read_metrics
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

SMALLER, LARGER = "jpeg_compressibility_pairwise", "jpeg_incompressibility_pairwise"
SCORERS = (SMALLER, LARGER, "jpeg_compressibility", "jpeg_incompressibility")  # the last: an independent scorer
EVAL_REWARDS = "eval.rewards=[" + ", ".join(f"{{name: {name}}}" for name in SCORERS) + "]"


@pytest.mark.long  # trained until the win rate moves: 20 steps and two evaluations
def test_win_rate_against_the_start_rises_with_training(ray_local, tmp_path):
    steps = 20  # 3 run seeds: 1.0 [1.0, 1.0], 0.94 [0.79, 1.0], 0.88 [0.68, 1.0] after 20 steps
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=winrate",
        f"run.num_steps={steps}",
        "eval.before_training=true",
        f"eval.every={steps}",
        "eval.num_prompts=8",
        EVAL_REWARDS,
    )
    summary = train(cfg)
    rows = read_metrics(tmp_path / "winrate")
    before, after = rows[0], rows[-1]
    for name in (SMALLER, LARGER):  # the starting policy against itself: every pair a tie
        figure = f"eval_before/{name}/win_rate_vs_start"
        assert (before[figure], before[f"{figure}_lo"], before[f"{figure}_hi"]) == (0.5, 0.5, 0.5)
    assert before["eval_before/jpeg_compressibility/delta_vs_start"] == 0.0
    assert after[f"eval/{SMALLER}/win_rate_vs_start_lo"] > 0.5, after  # the whole interval above no change
    assert after[f"eval/{LARGER}/win_rate_vs_start_hi"] < 0.5, after
    assert after["eval/jpeg_compressibility/delta_vs_start_lo"] > 0  # the training reward rises ...
    assert after["eval/alarm/jpeg_incompressibility"] == 1.0  # ... while an independent scorer falls: an alarm
    assert after[f"eval/alarm/{SMALLER}"] == 0.0 and 0 <= after[f"eval/{SMALLER}/first_position_rate"] <= 1
    assert summary.win_rates[SMALLER][0] == after[f"eval/{SMALLER}/win_rate_vs_start"]
    reference = tmp_path / "winrate" / "eval_reference"
    settings = json.loads((reference / "reference.json").read_text())
    assert [g["seed"] for g in settings["groups"]] == list(range(8)) and settings["sampler"]["num_steps"] == 16
    assert load_file(reference / "samples.safetensors")["eval-0"].shape == (2, 64, 64, 3)
    curve = Image.open(tmp_path / "winrate" / "samples" / "reward_curve.png")
    assert curve.size == (640, 3 * 360)  # training reward, win rates, pointwise changes

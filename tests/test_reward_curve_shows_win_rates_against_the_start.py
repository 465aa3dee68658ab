"""The reward curve of a run that evaluates against the start: the training reward, then the win rates and the
pointwise changes with their intervals; the summary reads the last win rates."""

import pytest
from PIL import Image

from orchestration.evaluation import last_win_rates
from orchestration.reporting import evaluation_series, plot_reward_curve


def _rows() -> list[dict]:
    rows = [{"step": s, "reward_mean": 0.5, "reward/flex": 0.5, "reward/clip": 0.2 + s / 100} for s in range(6)]
    rows[0] |= {"eval_before/flex/win_rate_vs_start": 0.5, "eval_before/clip/delta_vs_start": 0.0}
    for s, rate in ((2, 0.6), (5, 0.7)):
        rows[s] |= {
            "eval/flex/win_rate_vs_start": rate,
            "eval/flex/win_rate_vs_start_lo": rate - 0.1,
            "eval/flex/win_rate_vs_start_hi": rate + 0.1,
            "eval/flex/category/win_rate_vs_start": rate - 0.05,
            "eval/clip/delta_vs_start": -0.1 * s,
        }
    return rows


def test_series_are_placed_at_the_updates_the_weights_had_seen():
    series = evaluation_series(_rows(), "win_rate_vs_start")
    assert series["flex"][0] == (0, 0.5, None, None)
    assert series["flex"][1:] == [(3, 0.6, pytest.approx(0.5), pytest.approx(0.7)), (6, 0.7, 0.6, pytest.approx(0.8))]
    assert [p[0] for p in series["flex/category"]] == [3, 6]
    last = last_win_rates(_rows())
    assert last["flex"] == (0.7, 0.6, pytest.approx(0.8)) and last["flex/category"] == pytest.approx((0.65,) * 3)


def test_curve_has_a_panel_for_win_rates_and_one_for_changes(tmp_path):
    path = plot_reward_curve(_rows(), tmp_path / "curve.png")
    image = Image.open(path).convert("RGB")
    assert image.size == (640, 3 * 360)
    colours = {image.getpixel((x, y)) for x in range(40, 600, 2) for y in range(360 + 40, 720 - 40, 2)}
    assert (20, 40, 140) in colours and (128, 128, 128) in colours  # the win rate line and the 0.5 level
    alone = Image.open(plot_reward_curve([{"step": 0, "reward_mean": 1.0}], tmp_path / "plain.png"))
    assert alone.size == (640, 360)  # no evaluation: the training reward only

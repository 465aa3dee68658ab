"""The evaluation's math on tensors, without Ray: a sample judged beside its start sample in both orders, the
win rate over prompts with its t interval, pointwise deltas, the reward-hacking alarm, and the JPEG judges."""

import math

import pytest
import torch

from flexgrpo.config import ConfigError, RewardSpec
from flexgrpo.records import MediaGroup, VersusStart
from orchestration.evaluation import hacking_alarms, mean_interval, t_quantile_975, versus_start_metrics
from reward_workers.programmatic import JpegPreference, jpeg_size_kb
from reward_workers.registry import build_reward
from reward_workers.versus_start import pair_groups, score_versus_start
from tests.conftest import tiny_config


def _images(seed: int, count: int, flat: bool = False) -> torch.Tensor:
    """uint8 [count, 32, 32, 3]: noise (a large JPEG) or a flat colour (a small one)."""
    if flat:
        return torch.full((count, 32, 32, 3), 40 + seed, dtype=torch.uint8)
    return torch.randint(0, 256, (count, 32, 32, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_t_quantiles_and_the_interval_over_prompts():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042
    assert abs(t_quantile_975(31) - 2.040) < 2e-3 and abs(t_quantile_975(1000) - 1.962) < 1e-3
    values = torch.tensor([0.5, 0.75, 1.0, 1.0])
    mean, lo, hi = mean_interval(values)
    half = 3.182 * values.std().item() / 2
    assert mean == pytest.approx(0.8125) and lo == pytest.approx(0.8125 - half) and hi == pytest.approx(0.8125 + half)
    assert mean_interval(values, bounds=(0.0, 1.0))[2] == 1.0  # a win rate's interval stays in [0, 1]
    assert mean_interval(torch.tensor([0.5, 0.5, 0.5])) == (0.5, 0.5, 0.5)


def test_smaller_jpeg_judge_prefers_the_flat_image_in_both_orders():
    spec = RewardSpec(name="jpeg_compressibility_pairwise")
    noisy, flat = _images(0, 2), _images(1, 2, flat=True)
    assert jpeg_size_kb(flat[0]) < jpeg_size_kb(noisy[0])
    candidate = MediaGroup("eval-0", "p", 3, flat)
    reference = MediaGroup("eval-0", "p", 0, noisy)
    groups = pair_groups(candidate, reference, both_orders=False)
    assert [g.group_id for g in groups] == [
        "eval-0/s0/first",
        "eval-0/s0/second",
        "eval-0/s1/first",
        "eval-0/s1/second",
    ]
    assert torch.equal(groups[1].media[0], noisy[0]) and torch.equal(groups[1].media[1], flat[0])
    smaller = score_versus_start(spec, build_reward(spec), True, [candidate], [reference])[0]
    assert smaller.candidate[""].tolist() == [1.0, 1.0]
    assert (smaller.first_position_wins, smaller.position_decided) == (2, 4)  # the flat one shown first in half
    larger_spec = RewardSpec(name="jpeg_incompressibility_pairwise", both_orders=True)
    larger = score_versus_start(larger_spec, build_reward(larger_spec), True, [candidate], [reference])[0]
    assert larger.candidate[""].tolist() == [0.0, 0.0] and larger.requests == 4  # one group, both orders
    same = score_versus_start(spec, build_reward(spec), True, [reference], [reference])[0]
    assert same.candidate[""].tolist() == [0.5, 0.5] and same.position_decided == 0  # equal sizes: ties
    pointwise_spec = RewardSpec(name="jpeg_compressibility")
    point = score_versus_start(pointwise_spec, build_reward(pointwise_spec), False, [candidate], [reference])[0]
    assert not point.pairwise and (point.candidate[""] > point.reference[""]).all()


def test_the_judge_is_a_group_reward_too():
    judge = JpegPreference(RewardSpec(name="jpeg_compressibility_pairwise"), prefer_smaller=True)
    media = torch.cat([_images(0, 1), _images(1, 1, flat=True), _images(2, 1)])
    out = judge.score(MediaGroup("g0", "p", 0, media))
    assert out.rewards[1] == 1.0 and out.rewards.mean() == pytest.approx(0.5)  # a group's mean is 0.5


def _pairwise(group: str, rates: list[float], name: str = "judge", **parts) -> VersusStart:
    candidate = {"": torch.tensor(rates)} | {k: torch.tensor(v) for k, v in parts.items()}
    return VersusStart(group, name, True, candidate, {}, first_position_wins=1, position_decided=2, requests=4)


def _pointwise(group: str, cand: list[float], ref: list[float], name: str = "clip") -> VersusStart:
    return VersusStart(group, name, False, {"": torch.tensor(cand)}, {"": torch.tensor(ref)})


def test_figures_per_reward_per_component_and_per_prompt():
    results = [
        _pairwise("eval-0", [1.0, 0.5], category=[1.0, math.nan]),
        _pairwise("eval-1", [1.0, 1.0], category=[math.nan, math.nan]),  # no category evidence: left out
        _pairwise("eval-2", [0.5, 0.0], category=[0.0, 0.0]),
        _pointwise("eval-0", [1.0, 3.0], [1.0, 1.0]),
        _pointwise("eval-1", [2.0, 2.0], [1.0, 1.0]),
        _pointwise("eval-2", [0.0, 0.0], [1.0, 1.0]),
    ]
    m = versus_start_metrics(results)
    assert m["judge/win_rate_vs_start"] == pytest.approx((0.75 + 1.0 + 0.25) / 3)
    assert m["judge/win_rate_vs_start_lo"] == pytest.approx(max(0.0, 2 / 3 - 4.303 * 0.381881 / math.sqrt(3)), 1e-4)
    assert m["judge/category/win_rate_vs_start"] == pytest.approx(0.5)  # prompts 0 and 2
    assert m["judge/first_position_rate"] == 0.5 and m["judge/unparsed"] == 0
    assert m["clip/mean"] == pytest.approx(8 / 6) and m["clip/delta_vs_start"] == pytest.approx((1 + 1 - 1) / 3)
    assert m["clip/delta_vs_start_lo"] < m["clip/delta_vs_start"] < m["clip/delta_vs_start_hi"]


def test_alarm_when_the_training_reward_rises_and_an_independent_scorer_falls():
    rises = [_pairwise(f"eval-{i}", [1.0, 0.75 + 0.05 * i], name="flex") for i in range(4)]
    falls = [_pointwise(f"eval-{i}", [0.0, 0.1 * i], [1.0, 1.0], name="clip") for i in range(4)]
    flat = [_pointwise(f"eval-{i}", [1.0, 1.0 - 0.2 * (i % 2)], [1.0, 0.9], name="aesthetic") for i in range(4)]
    m = versus_start_metrics(rises + falls + flat)
    assert hacking_alarms(m, ["flex"], ["flex", "clip", "aesthetic"]) == {"alarm/clip": 1.0, "alarm/aesthetic": 0.0}
    same = versus_start_metrics([_pairwise(f"eval-{i}", [0.5, 0.5], name="flex") for i in range(4)] + falls)
    assert hacking_alarms(same, ["flex"], ["flex", "clip"]) == {"alarm/clip": 0.0}  # training signal flat
    assert hacking_alarms(m, ["flex", "clip"], ["flex", "clip"]) == {}  # no independent scorer


def test_eval_rewards_are_validated_with_their_key():
    cfg = tiny_config("eval.rewards=[{name: clip_score, model: m}, {name: jpeg_compressibility_pairwise}]")
    assert [s.name for s in cfg.eval.rewards] == ["clip_score", "jpeg_compressibility_pairwise"]
    with pytest.raises(ConfigError, match=r"eval.rewards\[0\].max_retries"):
        tiny_config("eval.rewards=[{name: clip_score, max_retries: -1}]")
    with pytest.raises(ConfigError, match="eval.num_prompts must be >= 2"):
        tiny_config("eval.num_prompts=1")
    from reward_workers.registry import check_reward_specs

    with pytest.raises(ConfigError, match=r"eval.rewards\[0\].name must be one of"):
        check_reward_specs([RewardSpec(name="nope")], "eval.rewards")


def test_reward_worker_scores_with_its_evaluation_scorers_or_else_the_training_rewards():
    from reward_workers.reward_worker import RewardWorker

    specs = [RewardSpec(name="jpeg_compressibility_pairwise"), RewardSpec(name="jpeg_incompressibility")]
    candidate = [MediaGroup(f"eval-{i}", "p", 1, _images(i, 2, flat=True)) for i in range(2)]
    reference = [MediaGroup(f"eval-{i}", "p", 0, _images(i, 2)) for i in range(2)]
    worker = RewardWorker([RewardSpec(name="jpeg_compressibility")], eval_specs=specs)
    results = worker.versus_start(candidate, reference)
    assert [(r.reward, r.group_id) for r in results] == [(s.name, g.group_id) for s in specs for g in candidate]
    m = versus_start_metrics(results)
    assert m["jpeg_compressibility_pairwise/win_rate_vs_start"] == 1.0
    assert m["jpeg_incompressibility/delta_vs_start"] < 0
    worker.swap([RewardSpec(name="jpeg_incompressibility_pairwise")], 1)  # a swap leaves the scorers alone
    assert {r.reward for r in worker.versus_start(candidate, reference)} == {s.name for s in specs}
    plain = RewardWorker([RewardSpec(name="jpeg_compressibility")])  # no eval.rewards: the training rewards
    assert versus_start_metrics(plain.versus_start(candidate, reference))["jpeg_compressibility/delta_vs_start"] > 0

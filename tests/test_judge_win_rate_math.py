"""Group rewards from hand-made judge replies match the win-rate formula worked out by hand."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from reward_workers.judge_parse import parse_flex_reply, parse_think_reply
from reward_workers.winrate import Comparison, flex_rewards, judge_pairs, win_rates


def flex_reply(winner: str, a: str, b: str, c: str | None = None, d: str | None = None) -> str:
    categories = [
        {"name": "A. Semantic Alignment & Accuracy", "cat_winner": a},
        {"name": "B. Quality", "cat_winner": b},
    ]
    categories += [{"name": "C. Aesthetics & Artistry", "cat_winner": c}] if c else []
    categories += [{"name": "D. Text rendering", "cat_winner": d}] if d else []
    return json.dumps({"categories": categories, "reason": "...", "winner": winner})


def robust(group_size: int, comparisons: list[Comparison], video: bool = False):
    return flex_rewards(group_size, comparisons, video=video, official=False)


def test_flex_rewards_by_hand() -> None:
    # pair (0, 1): 0 wins overall, A and C; 1 wins B. pair (0, 2): 2 wins overall and A, 0 wins B, C tied.
    # pair (1, 2): garbage, a tie overall and no category evidence.
    comparisons = [
        Comparison(0, 1, parse_flex_reply(flex_reply("Image 1", "Image 1", "Image 2", "Image 1"))),
        Comparison(0, 2, parse_flex_reply(flex_reply("Image 2", "Image 2", "Image 1", "tie"))),
        Comparison(1, 2, parse_flex_reply("I cannot decide {")),
    ]
    rates = robust(3, comparisons)
    overall = [1 / 2, 0.5 / 2, 1.5 / 2]
    per_category = {"A": [1 / 2, 0 / 1, 1 / 1], "B": [1 / 2, 1 / 1, 0 / 1], "C": [1.5 / 2, 0 / 1, 0.5 / 1]}
    torch.testing.assert_close(rates.overall, torch.tensor(overall))
    for name, values in per_category.items():
        torch.testing.assert_close(rates.per_category[name], torch.tensor(values))
    category_mean = [
        (1.0 * a + 0.7 * b + 0.7 * c) / 2.4 for a, b, c in zip(*(per_category[k] for k in "ABC"), strict=True)
    ]
    expected = [0.3 * o + 0.7 * m for o, m in zip(overall, category_mean, strict=True)]
    torch.testing.assert_close(rates.category, torch.tensor(category_mean))
    torch.testing.assert_close(rates.rewards, torch.tensor(expected))
    assert rates.rewards.dtype == torch.float32 and rates.rewards.shape == (3,)


def test_robust_counts_categories_a_b_c_only_and_video_weights_are_equal() -> None:
    with_d = [Comparison(0, 1, parse_flex_reply(flex_reply("Image 1", "Image 1", "Image 1", "Image 1", d="Image 2")))]
    rates = robust(2, with_d)
    assert set(rates.per_category) == {"A", "B", "C"}  # D is not one of the first three
    torch.testing.assert_close(rates.rewards, torch.tensor([1.0, 0.0]))
    missing_c = [Comparison(0, 1, parse_flex_reply(flex_reply("Image 2", "Image 1", "Image 2")))]
    rates = robust(2, missing_c)
    assert set(rates.per_category) == {"A", "B"}  # not reported: no evidence, not a tie
    torch.testing.assert_close(rates.category, torch.tensor([1.0 / 1.7, 0.7 / 1.7]))
    torch.testing.assert_close(robust(2, missing_c, video=True).category, torch.tensor([0.5, 0.5]))


def test_think_win_rates_and_uncompared_samples() -> None:
    replies = {(0, 1): "<answer>Image 2 is better</answer>", (1, 2): "<answer>Image 1 is better</answer>"}
    comparisons = [Comparison(i, j, parse_think_reply(text)) for (i, j), text in replies.items()]
    torch.testing.assert_close(win_rates(4, comparisons), torch.tensor([0.0, 1.0, 0.0, 0.5]))  # 3: never judged


def test_both_orders_cancel_a_position_biased_judge() -> None:
    pairs = judge_pairs(4, both_orders=True)
    always_first = parse_flex_reply(flex_reply("Image 1", "Image 1", "Image 1", "Image 1"))
    rates = robust(4, [Comparison(i, j, always_first) for i, j in pairs])
    torch.testing.assert_close(rates.rewards, torch.full((4,), 0.5))
    rates = robust(4, [Comparison(i, j, always_first) for i, j in judge_pairs(4)])
    torch.testing.assert_close(rates.rewards, torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))


@pytest.mark.parametrize(("group_size", "k"), [(4, 1), (4, 2), (6, 3), (9, 2), (9, 4), (9, 7), (24, 5)])
def test_pairs_per_sample_meets_at_least_k_others(group_size: int, k: int) -> None:
    pairs = judge_pairs(group_size, pairs_per_sample=k)
    assert len(set(pairs)) == len(pairs) and all(i < j for i, j in pairs)
    meetings = Counter(s for pair in pairs for s in pair)
    assert min(meetings[s] for s in range(group_size)) >= k
    assert len(pairs) <= group_size * -(-k // 2)  # G * ceil(k / 2)


def test_all_pairs_and_orders() -> None:
    assert judge_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    assert judge_pairs(3, pairs_per_sample=2) == judge_pairs(3)  # k = G - 1 is every pair
    assert judge_pairs(3, both_orders=True) == [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]
    assert len(judge_pairs(9)) == 36 and len(judge_pairs(9, pairs_per_sample=2)) == 9
    assert judge_pairs(1) == []

"""Group rewards from pairwise judgements: which pairs to judge, and win rates from the verdicts (pure math).

A sample's win rate is wins / comparisons, where a tie or an unreadable reply gives 0.5 to both sides. The Flex
reward (the rule of Pref-GRPO `fastvideo/rewards/unifiedreward_flex.py`): category win rates come only from
replies that parsed (their first three categories); a sample's category mean weighs them 1.0/0.7/0.7 (images)
or 1.0/1.0/1.0 (videos); reward = (0.3 * overall + 0.7 * category mean) / (0.3 + 0.7), or the overall win rate
alone where the sample has no category evidence.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from reward_workers.judge_parse import PairVerdict

OVERALL_WEIGHT = 0.3
CATEGORY_WEIGHT = 0.7
CATEGORY_WEIGHTS = {False: (1.0, 0.7, 0.7), True: (1.0, 1.0, 1.0)}  # images, videos: A, B, C
ROBUST_LETTERS = ("A", "B", "C")
DECIMALS = 3  # official protocol: the authors round win rates and category means to 3 decimals


@dataclass(frozen=True)
class Comparison:
    """One judged pair: `first` was shown as Image 1, `second` as Image 2."""

    first: int
    second: int
    verdict: PairVerdict


@dataclass(frozen=True)
class FlexRates:
    """The Flex reward of a group and what it is made of. G = group size."""

    rewards: torch.Tensor  # [G] float32 mixed reward
    overall: torch.Tensor  # [G] float32 overall win rate
    category: torch.Tensor  # [G] float32 weighted category mean (0 where a sample has no category evidence)
    evidence: torch.Tensor  # [G] bool, the sample has a category win rate from at least one parsed reply
    per_category: dict[str, torch.Tensor]  # category key -> [G] float32 win rate (0 where never compared)


def judge_pairs(
    group_size: int, pairs_per_sample: int | None = None, both_orders: bool = False
) -> list[tuple[int, int]]:
    """The (shown first, shown second) pairs to judge for a group of `group_size` samples.

    pairs_per_sample None: all C(G, 2) pairs. k: each sample meets at least k others, on a ring (sample i
    meets i +- 1, ..., i +- ceil(k / 2)), G * ceil(k / 2) pairs at most. both_orders: each pair also reversed.
    """
    if group_size < 2:
        return []
    if pairs_per_sample is None or pairs_per_sample >= group_size - 1:
        pairs = [(i, j) for i in range(group_size) for j in range(i + 1, group_size)]
    else:
        unique = {
            tuple(sorted((i, (i + d) % group_size)))
            for d in range(1, math.ceil(pairs_per_sample / 2) + 1)
            for i in range(group_size)
        }
        pairs = sorted(unique)  # type: ignore[arg-type]
    if both_orders:
        pairs = [p for i, j in pairs for p in ((i, j), (j, i))]
    return pairs


class _Tally:
    """Wins and comparisons per sample."""

    def __init__(self) -> None:
        self.wins: dict[int, float] = defaultdict(float)
        self.seen: dict[int, int] = defaultdict(int)

    def add(self, first: int, second: int, winner: int | None) -> None:
        self.seen[first] += 1
        self.seen[second] += 1
        if winner is None:
            self.wins[first] += 0.5
            self.wins[second] += 0.5
        else:
            self.wins[first if winner == 0 else second] += 1

    def rate(self, i: int, unseen: float) -> float:
        return self.wins[i] / self.seen[i] if self.seen[i] else unseen


def win_rates(group_size: int, comparisons: list[Comparison], rounded: bool = False) -> torch.Tensor:
    """Per-sample overall win rate [G] float32; 0.5 if never compared (rounded: the authors' 3 decimals, 0)."""
    tally = _Tally()
    for c in comparisons:
        tally.add(c.first, c.second, c.verdict.winner)
    if rounded:
        return torch.tensor([round(tally.rate(i, 0.0), DECIMALS) for i in range(group_size)], dtype=torch.float32)
    return torch.tensor([tally.rate(i, 0.5) for i in range(group_size)], dtype=torch.float32)


def flex_rewards(group_size: int, comparisons: list[Comparison], *, video: bool, official: bool) -> FlexRates:
    """The Flex reward rule. official: categories keyed by the names the replies give (already cut to the first
    three by the parser), weighted in order of first appearance (1.0 past the third), rates rounded as the
    authors round them. robust: categories by letter, A/B/C only, each with its own weight, no rounding."""
    overall = _Tally()
    categories: dict[str, _Tally] = {}  # in order of first appearance
    for c in comparisons:
        overall.add(c.first, c.second, c.verdict.winner)
        if not c.verdict.parsed:
            continue
        for key, winner in c.verdict.categories:
            if official or key in ROBUST_LETTERS:
                categories.setdefault(key, _Tally()).add(c.first, c.second, winner)
    weights = CATEGORY_WEIGHTS[video]
    if official:
        keys = list(categories)
        key_weights = [weights[k] if k < len(weights) else 1.0 for k in range(len(keys))]
    else:
        keys = [letter for letter in ROBUST_LETTERS if letter in categories]
        key_weights = [weights[ROBUST_LETTERS.index(letter)] for letter in keys]

    overall_rates, means, evidence, rewards = [], [], [], []
    for i in range(group_size):
        o = overall.rate(i, 0.0 if official else 0.5)
        o = round(o, DECIMALS) if official else o
        seen = [
            (categories[k].rate(i, 0.0), w) for k, w in zip(keys, key_weights, strict=True) if categories[k].seen[i]
        ]
        mean = sum(r * w for r, w in seen) / sum(w for _, w in seen) if seen else 0.0
        mean = round(mean, DECIMALS) if official and seen else mean
        mixed = (OVERALL_WEIGHT * o + CATEGORY_WEIGHT * mean) / (OVERALL_WEIGHT + CATEGORY_WEIGHT)
        overall_rates.append(o)
        means.append(mean)
        evidence.append(bool(seen))
        rewards.append(mixed if seen else o)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32)  # noqa: E731
    return FlexRates(
        rewards=as_tensor(rewards),
        overall=as_tensor(overall_rates),
        category=as_tensor(means),
        evidence=torch.tensor(evidence, dtype=torch.bool),
        per_category={k: as_tensor([categories[k].rate(i, 0.0) for i in range(group_size)]) for k in keys},
    )

"""Group rewards from pairwise judgements: which pairs to judge, and win rates from the verdicts (pure math).

A sample's win rate is wins / comparisons, where a tie or an unreadable reply gives 0.5 to both sides. The
reward of a Flex-style judge mixes the overall win rate with the category win rates:
reward = OVERALL_WEIGHT * overall + (1 - OVERALL_WEIGHT) * weighted mean of the category win rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reward_workers.judge_parse import PairVerdict

OVERALL_WEIGHT = 0.3
CATEGORY_WEIGHTS = {"A": 1.0, "B": 0.7, "C": 0.7, "D": 0.7}  # D counts only where a judge reports it


@dataclass(frozen=True)
class Comparison:
    """One judged pair: `first` was shown as Image 1, `second` as Image 2."""

    first: int
    second: int
    verdict: PairVerdict


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


def win_rates(group_size: int, comparisons: list[Comparison], category: str | None = None) -> torch.Tensor:
    """Per-sample win rate [G] float32, overall (category None) or in one category; 0.5 if never compared."""
    wins = torch.zeros(group_size, dtype=torch.float64)  # [G]
    seen = torch.zeros(group_size, dtype=torch.float64)  # [G]
    for c in comparisons:
        winner = c.verdict.winner if category is None else c.verdict.categories.get(category)
        seen[[c.first, c.second]] += 1
        if winner is None:
            wins[[c.first, c.second]] += 0.5
        else:
            wins[c.first if winner == 0 else c.second] += 1
    rates = torch.where(seen > 0, wins / seen.clamp(min=1), torch.full_like(wins, 0.5))  # [G]
    return rates.float()


def flex_rewards(
    group_size: int, comparisons: list[Comparison]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rewards [G] = 0.3 * overall win rate + 0.7 * weighted category mean (A 1.0, B 0.7, C 0.7, D 0.7).

    Also returns the win rates by name ("overall", "A", "B", ...), each [G] float32. A category a verdict does
    not report is a tie for that pair; D enters only if some verdict reports it.
    """
    letters = ["A", "B", "C"] + (["D"] if any("D" in c.verdict.categories for c in comparisons) else [])
    rates = {"overall": win_rates(group_size, comparisons)}
    rates |= {letter: win_rates(group_size, comparisons, letter) for letter in letters}
    total_weight = sum(CATEGORY_WEIGHTS[letter] for letter in letters)
    category_mean = sum(CATEGORY_WEIGHTS[letter] * rates[letter] for letter in letters) / total_weight  # [G]
    rewards = OVERALL_WEIGHT * rates["overall"] + (1 - OVERALL_WEIGHT) * category_mean  # [G]
    return rewards.float(), rates

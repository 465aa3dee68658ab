"""The interface every reward model implements, and its output record (internal to the reward pool)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from flexgrpo.records import MediaGroup


@dataclass(frozen=True)
class RewardOutput:
    rewards: torch.Tensor  # [G] float32, one reward per sample of the group
    details: list[dict] = field(default_factory=list)  # JSON-able per-judgement details, for logs
    unparsed: int = 0  # judge replies that did not parse (scored as ties)
    requests: int = 0  # judge requests made
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # part -> [G] float32 (Flex: see judges.py)
    # Flex: the judge's category name -> [G] float32 win rate in that category (0 where never compared in it)
    categories: dict[str, torch.Tensor] = field(default_factory=dict)
    first_position_wins: int = 0  # pairwise: decided judgements won by the sample shown first
    position_decided: int = 0  # pairwise: judgements with a winner (not a tie or unparsed)


class RewardModel(Protocol):
    def score(self, group: MediaGroup) -> RewardOutput:
        """Score all G samples of one group at once (pairwise judges need the whole group)."""
        ...

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        """Score several groups together (judges: one batch of requests); one output per group, in order."""
        ...

    def close(self) -> None:
        """Release engines and connections (called when the reward spec is swapped out)."""
        ...

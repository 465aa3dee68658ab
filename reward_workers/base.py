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


class RewardModel(Protocol):
    def score(self, group: MediaGroup) -> RewardOutput:
        """Score all G samples of one group at once (pairwise judges need the whole group)."""
        ...

    def close(self) -> None:
        """Release engines and connections (called when the reward spec is swapped out)."""
        ...

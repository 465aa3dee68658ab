"""The reward worker: scores whole rollout groups with the current reward spec; swaps specs while running."""

from __future__ import annotations

import threading

import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup, ScoredGroup
from reward_workers.base import RewardModel
from reward_workers.registry import build_reward, check_reward_specs


class RewardWorker:
    """Scores groups with the current reward spec. Safe to call from several threads: `swap` builds the new
    models while scoring goes on, then waits for the group in flight; no group is scored by two specs."""

    def __init__(self, specs: list[RewardSpec], version: int = 0) -> None:
        self.specs: list[RewardSpec] = []
        self.models: list[RewardModel] = []
        self.version = -1
        self._lock = threading.Lock()  # held while a group is scored and while the spec is replaced
        self.swap(specs, version)

    def swap(self, specs: list[RewardSpec], version: int) -> int:
        """Load a new reward spec; the old models are released only once the new ones are built.

        A spec that fails to build leaves the current one in place (and releases what it had built)."""
        check_reward_specs(specs)
        models: list[RewardModel] = []
        try:
            for spec in specs:
                models.append(build_reward(spec))
        except BaseException:
            for model in models:
                model.close()
            raise
        with self._lock:
            old, self.specs, self.models, self.version = self.models, list(specs), models, version
        for model in old:
            model.close()
        return version

    def ready(self) -> int:
        """Answers once the actor is up (after a restart too); returns its current version."""
        return self.version

    def score(self, group: MediaGroup) -> ScoredGroup:
        with self._lock:
            return self._score(group)

    def _score(self, group: MediaGroup) -> ScoredGroup:
        outputs = [model.score(group) for model in self.models]
        components = {spec.name: out.rewards.float() for spec, out in zip(self.specs, outputs, strict=True)}
        combined = sum(spec.weight * components[spec.name] for spec in self.specs)
        return ScoredGroup(
            group_id=group.group_id,
            policy_version=group.policy_version,
            reward_version=self.version,
            rewards=torch.as_tensor(combined, dtype=torch.float32),
            components=components,
            details=[
                d | {"reward": spec.name}
                for spec, out in zip(self.specs, outputs, strict=True)
                for d in out.details
            ],
            unparsed=sum(out.unparsed for out in outputs),
            requests=sum(out.requests for out in outputs),
        )

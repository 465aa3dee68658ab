"""The reward worker: scores whole rollout groups with the current reward spec; swaps specs while running."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import torch

from flexgrpo.config import RewardSpec
from flexgrpo.heartbeat import Heartbeating
from flexgrpo.records import MediaGroup, ScoredGroup, VersusStart
from reward_workers.base import RewardModel, RewardOutput
from reward_workers.registry import PAIRWISE, build_reward, check_reward_specs
from reward_workers.versus_start import score_versus_start


@dataclass
class _Loaded:
    """One version of the reward spec with its models, and how many scorings still use it."""

    specs: list[RewardSpec]
    models: list[RewardModel]
    version: int
    borrowed: frozenset[int] = frozenset()  # ids of models another _Loaded owns (the evaluation's): not closed here
    in_flight: int = 0
    retired: bool = False  # swapped out: closed once the last scoring that uses it is done
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1
            close = self.retired and self.in_flight == 0
        if close:
            self.close()

    def retire(self) -> None:
        with self.lock:
            self.retired = True
            close = self.in_flight == 0
        if close:
            self.close()

    def close(self) -> None:
        for model in self.models:
            if id(model) not in self.borrowed:
                model.close()


class RewardWorker(Heartbeating):
    """Scores groups with the current reward spec; safe to call from several threads at once.

    Groups scored concurrently (`score` from several threads, or `score_many`) share the judges' engine
    batches; nothing is held across a group. Each call scores all its groups with the one spec version current
    when it starts (a group never mixes specs); `swap` builds the new models while scoring goes on, and the old
    ones are closed when the last call using them ends.

    Evaluation scorers (`eval_specs`, built once, never swapped) score evaluation groups against the starting
    policy's (`versus_start`); without them the evaluation uses the current training spec. A training reward equal
    to an evaluation scorer (its weight aside) uses the scorer's model instead of loading it a second time.
    """

    def __init__(
        self,
        specs: list[RewardSpec],
        version: int = 0,
        *,
        eval_specs: list[RewardSpec] | None = None,
        hold_s: float = 0.0,
    ) -> None:
        self.hold_s = hold_s  # benchmarks and tests: a sleep per scoring call, standing in for a GPU-bound judge
        self._hold = threading.Lock()  # ... that scores one call at a time
        self._current: _Loaded | None = None
        self._swap_lock = threading.Lock()  # held only to exchange the current spec
        self._eval = _load(eval_specs, version=0) if eval_specs else None
        self.swap(specs, version)

    @property
    def version(self) -> int:
        assert self._current is not None
        return self._current.version

    @property
    def specs(self) -> list[RewardSpec]:
        assert self._current is not None
        return self._current.specs

    @property
    def models(self) -> list[RewardModel]:
        assert self._current is not None
        return self._current.models

    def swap(self, specs: list[RewardSpec], version: int) -> int:
        """Load a new reward spec; the old models are released once no scoring uses them.

        A spec that fails to build leaves the current one in place (and releases what it had built)."""
        loaded = _load(specs, version, share=self._eval)
        with self._swap_lock:
            old, self._current = self._current, loaded
        if old is not None:
            old.retire()
        return version

    def ready(self) -> int:
        """Answers once the actor is up (after a restart too); returns its current version."""
        return self.version

    def score(self, group: MediaGroup) -> ScoredGroup:
        return self.score_many([group])[0]

    def score_many(self, groups: list[MediaGroup]) -> list[ScoredGroup]:
        """Score several groups together (the judges send all their requests as one batch), all with the same
        spec version; one ScoredGroup per group, in order."""
        with self._swap_lock:
            loaded = self._current
            assert loaded is not None
            loaded.enter()
        try:
            per_model = [model.score_many(groups) for model in loaded.models]  # [models][groups]
        finally:
            loaded.leave()
        if self.hold_s:
            with self._hold:
                time.sleep(self.hold_s)
        return [_scored(group, loaded, [outputs[g] for outputs in per_model]) for g, group in enumerate(groups)]

    def versus_start(self, candidates: list[MediaGroup], references: list[MediaGroup]) -> list[VersusStart]:
        """Evaluation groups against the starting policy's groups of the same prompts and seeds (same order),
        with every evaluation scorer: one VersusStart per scorer and group, scorers in spec order."""
        with self._swap_lock:
            loaded = self._eval or self._current
            assert loaded is not None
            loaded.enter()
        try:
            return [
                result
                for spec, model in zip(loaded.specs, loaded.models, strict=True)
                for result in score_versus_start(spec, model, spec.name in PAIRWISE, candidates, references)
            ]
        finally:
            loaded.leave()


def _load(specs: list[RewardSpec], version: int, share: _Loaded | None = None) -> _Loaded:
    """Build the models of a spec, taking those of `share` whose spec is the same but for the weight (they stay
    `share`'s to close); one that fails releases what was built and raises."""
    check_reward_specs(specs)
    models: list[RewardModel] = []
    borrowed: set[int] = set()
    try:
        for spec in specs:
            owned = [m for s, m in zip(share.specs, share.models, strict=True) if _same_model(s, spec)] if share else []
            if owned:
                borrowed.add(id(owned[0]))
            models.append(owned[0] if owned else build_reward(spec))
    except BaseException:
        for model in models:
            if id(model) not in borrowed:
                model.close()
        raise
    return _Loaded(list(specs), models, version, frozenset(borrowed))


def _same_model(a: RewardSpec, b: RewardSpec) -> bool:
    """Two specs that build the same model (the weight only mixes rewards)."""
    return replace(a, weight=1.0) == replace(b, weight=1.0)


def _scored(group: MediaGroup, loaded: _Loaded, outputs: list[RewardOutput]) -> ScoredGroup:
    """One group's record from each model's output (same order as `loaded.specs`)."""
    components: dict[str, torch.Tensor] = {}
    for spec, out in zip(loaded.specs, outputs, strict=True):
        components[spec.name] = out.rewards.float()
        components |= {f"{spec.name}/{part}": value.float() for part, value in out.components.items()}
    combined = sum(spec.weight * components[spec.name] for spec in loaded.specs)
    return ScoredGroup(
        group_id=group.group_id,
        prompt=group.prompt,
        policy_version=group.policy_version,
        reward_version=loaded.version,
        rewards=torch.as_tensor(combined, dtype=torch.float32),
        components=components,
        weights={spec.name: spec.weight for spec in loaded.specs},
        details=[
            d | {"reward": spec.name} for spec, out in zip(loaded.specs, outputs, strict=True) for d in out.details
        ],
        unparsed=sum(out.unparsed for out in outputs),
        requests=sum(out.requests for out in outputs),
        first_position_wins=sum(out.first_position_wins for out in outputs),
        position_decided=sum(out.position_decided for out in outputs),
    )

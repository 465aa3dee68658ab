"""Reward models by name: a config's `rewards[i].name` is resolved here, nowhere else."""

from __future__ import annotations

from collections.abc import Callable

from flexgrpo.config import ConfigError, RewardSpec
from reward_workers.base import RewardModel


def _jpeg_compressibility(spec: RewardSpec) -> RewardModel:
    from reward_workers.programmatic import JpegSize

    return JpegSize(sign=-1.0)


def _jpeg_incompressibility(spec: RewardSpec) -> RewardModel:
    from reward_workers.programmatic import JpegSize

    return JpegSize(sign=1.0)


REWARD_MODELS: dict[str, Callable[[RewardSpec], RewardModel]] = {
    "jpeg_compressibility": _jpeg_compressibility,
    "jpeg_incompressibility": _jpeg_incompressibility,
}


def check_reward_specs(specs: list[RewardSpec]) -> None:
    """Fail at start-up on an unknown or repeated reward name, listing the known ones."""
    seen = set()
    for i, spec in enumerate(specs):
        if spec.name not in REWARD_MODELS:
            raise ConfigError(f"rewards[{i}].name must be one of {sorted(REWARD_MODELS)}, got {spec.name!r}")
        if spec.name in seen:
            raise ConfigError(f"rewards[{i}].name {spec.name!r} appears twice: give each reward once")
        seen.add(spec.name)


def build_reward(spec: RewardSpec) -> RewardModel:
    check_reward_specs([spec])
    return REWARD_MODELS[spec.name](spec)

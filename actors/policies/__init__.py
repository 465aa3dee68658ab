"""Policy families by name: the config's `policy.family` is resolved here, nowhere else."""

from __future__ import annotations

import torch

from actors.policies.base import DiffusionPolicy
from flexgrpo.config import ConfigError, PolicyConfig


def _sd3(cfg: PolicyConfig, device: torch.device | str, text_encoders: bool) -> DiffusionPolicy:
    from actors.policies.sd3 import SD3Policy

    return SD3Policy(cfg, device, text_encoders=text_encoders)


def _flux(cfg: PolicyConfig, device: torch.device | str, text_encoders: bool) -> DiffusionPolicy:
    from actors.policies.flux import FluxPolicy

    return FluxPolicy(cfg, device, text_encoders=text_encoders)


def _wan(cfg: PolicyConfig, device: torch.device | str, text_encoders: bool) -> DiffusionPolicy:
    from actors.policies.wan import WanPolicy

    return WanPolicy(cfg, device, text_encoders=text_encoders)


POLICY_FAMILIES = {"sd3": _sd3, "flux": _flux, "wan": _wan}


def check_family(family: str) -> None:
    if family not in POLICY_FAMILIES:
        raise ConfigError(f"policy.family must be one of {sorted(POLICY_FAMILIES)}, got {family!r}")


def build_policy(cfg: PolicyConfig, device: torch.device | str = "cpu", text_encoders: bool = True) -> DiffusionPolicy:
    """text_encoders=False: a policy that cannot encode prompts, without its text encoders' memory (a learner)."""
    check_family(cfg.family)
    return POLICY_FAMILIES[cfg.family](cfg, device, text_encoders)

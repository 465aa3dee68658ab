"""What the learner ranks write to disk, driven from the driver: a checkpoint's learner state (and the LoRA
beside it), and a finished run's weights as diffusers loads them. Every rank takes part where ZeRO-3 gathers."""

from __future__ import annotations

from pathlib import Path

import ray

from flexgrpo.config import Config
from orchestration.roles import Roles


def save_learner_state(roles: Roles, cfg: Config, folder: Path) -> None:
    """Into a checkpoint folder being written: `learner/` (DeepSpeed state of every rank) and `lora/`."""
    ray.get([a.save_checkpoint.remote(str(folder / "learner")) for a in roles.learner.actors])
    if cfg.policy.lora.enabled:
        save_lora(roles, folder / "lora")


def save_lora(roles: Roles, folder: Path) -> Path:
    """The adapter in the diffusers LoRA format (rank 0 writes it)."""
    return ray.get(roles.learner.actors[0].save_lora.remote(str(folder)))


def final_weights_dir(cfg: Config, run_dir: Path) -> Path:
    """Where a job writes its trained weights at the end: RUN_DIR/lora, or a full fine-tune's RUN_DIR/transformer."""
    return run_dir / ("lora" if cfg.policy.lora.enabled else "transformer")


def save_final_weights(roles: Roles, cfg: Config, run_dir: Path) -> Path:
    """The trained weights as diffusers loads them, in `final_weights_dir` (the EMA when the learner keeps one;
    every rank takes part, as ZeRO-3 gathers)."""
    folder = final_weights_dir(cfg, run_dir)
    if cfg.policy.lora.enabled:
        return save_lora(roles, folder)
    return ray.get([a.export.remote(str(folder)) for a in roles.learner.actors])[0]

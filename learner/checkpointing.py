"""The learner's part of a checkpoint: DeepSpeed's state (weights, optimizer, schedulers) and the policy version."""

from __future__ import annotations

from pathlib import Path

TAG = "state"  # DeepSpeed's tag: one state per folder


def save_checkpoint(engine, folder: str | Path, version: int) -> None:
    """Every rank of the DeepSpeed `engine` must call it."""
    engine.save_checkpoint(str(folder), tag=TAG, client_state={"version": version})


def load_checkpoint(engine, folder: str | Path) -> int:
    """Restore what `save_checkpoint` wrote into `engine`. -> the policy version it held"""
    path, client_state = engine.load_checkpoint(str(folder), tag=TAG)
    if path is None:
        raise FileNotFoundError(f"no learner checkpoint in {folder}")
    return int(client_state["version"])

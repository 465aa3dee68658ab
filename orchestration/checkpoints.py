"""Where a run's checkpoints live, and the driver's part of them (the learner writes its own state).

<run_dir>/checkpoints/step_000120/   learner/ (DeepSpeed state), lora/ (diffusers format), run_state.json
<run_dir>/checkpoints/latest         name of the newest complete checkpoint, written last
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunState:
    step: int  # the next step to run
    policy_version: int
    reward_specs: dict[str, list[dict]]  # reward version (as a string, JSON keys) -> its reward specs


def checkpoint_folder(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def write_run_state(folder: Path, state: RunState) -> None:
    """Write the run state, then point `latest` at this checkpoint (atomically, so a crash keeps the old one)."""
    (folder / "run_state.json").write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    pointer = folder.parent / "latest"
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(folder.name, encoding="utf-8")
    os.replace(tmp, pointer)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not (folder / "run_state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {folder}, which holds no run_state.json")
    return folder


def read_run_state(folder: Path) -> RunState:
    return RunState(**json.loads((folder / "run_state.json").read_text(encoding="utf-8")))

"""Where a run's checkpoints live, and how they are written so that a crash never leaves a half one as `latest`.

<run_dir>/checkpoints/step_000120/   learner/ (DeepSpeed state), lora/ (diffusers format), run_state.json
<run_dir>/checkpoints/latest         name of the newest complete checkpoint, written last

A checkpoint is written into `step_000120.partial/`, renamed when complete, then `latest` is pointed at it;
only the newest `keep` checkpoints are kept. A partial folder left by a crash is never read, and removed by the
next checkpoint written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

PARTIAL = ".partial"


@dataclass(frozen=True)
class RunState:
    step: int  # the next step to run; the ledger is rolled back to it on resume
    policy_version: int
    reward_specs: dict[str, list[dict]]  # reward version (as a string, JSON keys) -> its reward specs
    next_index: int = 0  # first index of the prompt stream not yet admitted when the checkpoint was taken


def checkpoint_folder(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def write_checkpoint(
    run_dir: Path, state: RunState, save_roles: Callable[[Path], None], *, keep: int
) -> tuple[Path, list[Path]]:
    """Write a complete checkpoint of `state.step`: the roles' state (`save_roles(folder)`), then the run state,
    then the rename and the `latest` pointer; then drop all but the newest `keep` checkpoints.
    -> (the checkpoint written, the complete checkpoints kept, oldest first)"""
    final = checkpoint_folder(run_dir, state.step)
    partial = final.with_name(final.name + PARTIAL)
    for crashed in final.parent.glob(f"step_*{PARTIAL}"):  # (one job writes a run's checkpoints: its lease)
        shutil.rmtree(crashed, ignore_errors=True)
    partial.mkdir(parents=True)
    save_roles(partial)
    (partial / "run_state.json").write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    if final.exists():  # the same step checkpointed again (after a resume): the new one replaces it
        shutil.rmtree(final)
    os.replace(partial, final)
    pointer = final.parent / "latest"
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(final.name, encoding="utf-8")
    os.replace(tmp, pointer)
    complete = complete_checkpoints(run_dir)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final, complete[-keep:]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first."""
    folder = run_dir / "checkpoints"
    return sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(PARTIAL))


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder holds (the next step to run)."""
    return int(folder.name.removeprefix("step_"))


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

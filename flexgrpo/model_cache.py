"""A folder cache for models built on demand (the tiny random models of tests and the tiny recipe)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Callable, Collection
from pathlib import Path

from flexgrpo.config import ConfigError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name


def cache_dir() -> Path:
    """Where built models live: $FLEXGRPO_CACHE, else ~/.cache/flexgrpo."""
    return Path(os.environ.get("FLEXGRPO_CACHE", Path.home() / ".cache" / "flexgrpo"))


def cached_build(name: str, build: Callable[[Path], None], marker: str) -> Path:
    """Return <cache>/models/<name>, running `build(folder)` first if `marker` is not in it yet.

    Safe across processes (a file lock) and against a build that dies half-way (it writes a staging folder).
    """
    target = cache_dir() / "models" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / marker).exists():
            staging = target.parent / f".{name}.building"
            shutil.rmtree(staging, ignore_errors=True)
            build(staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


def built_in_bf16(build: Callable[..., None], path: Path) -> None:
    """Run `build(path, full_depth=True)` with bf16 as torch's default dtype (full-depth random models)."""
    import torch

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        build(path, full_depth=True)
    finally:
        torch.set_default_dtype(default)


def check_model_reference(key: str, value: str, built_here: Collection[str]) -> None:
    """A model reference must be a model built here (a tiny one), a folder that exists, or a hub id (org/name)."""
    if value in built_here or Path(value).is_dir() or (HUB_ID.match(value) and not Path(value).parent.exists()):
        return
    raise ConfigError(
        f"{key} {value!r} is not a folder that exists, nor a hub id like 'org/name', nor one of {sorted(built_here)}"
    )

"""A folder cache for models built on demand (the tiny random models of tests and the tiny recipe)."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path


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

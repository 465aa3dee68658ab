"""Measure the main job: wall time, peak memory of all its processes together, first vs last rewards.

    python benchmarks/measure_main_job.py [RECIPE.yaml] [key=value ...]

Runs `flexgrpo train` as a child process, samples the summed RSS of its whole process tree (driver, Ray's
processes, every actor, Redis) every 0.5 s, and prints a table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main(args: list[str]) -> None:
    out = Path(tempfile.mkdtemp(prefix="flexgrpo-measure-"))
    cmd = [sys.executable, "-m", "orchestration.cli", "train", *args, f"run.output_dir={out}", "run.name=measure"]
    start = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        peak = max(peak, tree_rss(root))
        time.sleep(0.5)
    wall = time.monotonic() - start
    if child.returncode:
        raise SystemExit(f"flexgrpo train exited with {child.returncode}")
    rewards = [json.loads(line)["reward_mean"] for line in (out / "measure" / "metrics.jsonl").read_text().splitlines()]
    k = max(1, len(rewards) // 5)
    first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
    rows = [
        ("steps", f"{len(rewards)}"),
        ("wall time", f"{wall:.0f} s"),
        ("peak RSS, all processes", f"{peak / 2**30:.2f} GiB"),
        (f"mean reward, first {k} steps", f"{first:.4f}"),
        (f"mean reward, last {k} steps", f"{last:.4f}"),
        ("last - first", f"{last - first:+.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"main job: flexgrpo train {' '.join(args)}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main(sys.argv[1:])

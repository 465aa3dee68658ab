"""Where the test suite's time goes: CPU seconds per kind of process, while the suite runs.

Runs `make test` (or the command after `--`) and samples every process on the machine twice a second; a process
is counted with its last CPU time seen, under a kind named from its command line (a Ray actor by its class,
Ray's daemons by name, the pytest workers, the jobs' drivers). Prints a table, largest first, then the wall time
and the machine's CPU seconds over the run: when those are close to wall time x cores, the suite is bounded by
CPU, and only less work (not less waiting) makes it faster.

    python benchmarks/suite_cpu.py                      # the whole suite, as `make test` runs it
    python benchmarks/suite_cpu.py -- .venv/bin/python -m pytest tests/test_onpolicy_ratio_is_one.py

It also loads `benchmarks/per_test_cpu.py` into pytest (through PYTEST_ADDOPTS) and prints the tests that cost
the most CPU, each charged what its process tree spent: the list to read before choosing what to make cheaper.

Run it on an otherwise idle machine: every process that starts during the run is counted, the suite's or not. A
process that lives less than a sample interval is missed (they are cheap), and so is CPU spent by processes
that were running before.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections import Counter

import psutil

SAMPLE_S = 0.5
DAEMONS = ("gcs_server", "raylet", "dashboard.py", "log_monitor", "monitor.py", "redis-server", "watchdog")


def kind(cmdline: str) -> str:
    """The kind of process a command line belongs to."""
    if actor := re.match(r"ray::(\w+)", cmdline):
        return f"ray::{actor.group(1)}"
    if sub := re.search(r"(?:^|/)flexgrpo(?: (\w+)|$)", cmdline):  # (a job's driver may retitle itself)
        return f"flexgrpo {sub.group(1) or 'train'} (driver)"
    if "xdist" in cmdline or "-m pytest" in cmdline:
        return "pytest (the tests' own work)"
    for name in DAEMONS:
        if name in cmdline:
            return f"daemon: {name}"
    if "vllm" in cmdline.lower() or "EngineCore" in cmdline:
        return "vLLM engine"
    return "other: " + cmdline[:40]


def machine_cpu_s() -> float:
    """CPU seconds the whole machine spent so far (user, nice, system, irq, softirq)."""
    fields = open("/proc/stat").readline().split()[1:8]
    ticks = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))
    return ticks / os.sysconf("SC_CLK_TCK")


def sample(seen: dict, before: set[int], stop: threading.Event) -> None:
    """(pid, start time) -> (CPU seconds, kind) of every process that started after `before` was taken."""
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline", "cpu_times", "create_time"]):
            info = proc.info
            if info["pid"] in before or info["cpu_times"] is None:
                continue
            key = (info["pid"], info["create_time"])
            cpu = info["cpu_times"].user + info["cpu_times"].system
            name = " ".join(info["cmdline"] or [])
            if name or key not in seen:
                seen[key] = (cpu, kind(name))
            else:  # (a process that is exiting has lost its command line)
                seen[key] = (cpu, seen[key][1])
        stop.wait(SAMPLE_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="*", default=["make", "test"], help="the command to measure")
    args = parser.parse_args()
    before = {p.pid for p in psutil.process_iter()}
    seen: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(seen, before, stop), daemon=True)
    start_wall, start_cpu = time.monotonic(), machine_cpu_s()
    sampler.start()
    per_test_log = tempfile.NamedTemporaryFile(prefix="test-cpu-", suffix=".jsonl", delete=False).name
    env = {
        **os.environ,
        "FLEXGRPO_TEST_CPU_LOG": per_test_log,
        "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} -p benchmarks.per_test_cpu".strip(),
    }
    code = subprocess.call(args.command, env=env)
    wall, cpu = time.monotonic() - start_wall, machine_cpu_s() - start_cpu
    stop.set()
    sampler.join()

    per_kind, processes = Counter(), Counter()
    for seconds, name in seen.values():
        per_kind[name] += seconds
        processes[name] += 1
    for short in [k for k in per_kind if k.startswith("ray::")]:  # Ray cuts some titles short: ray::GRPOLearne
        full = [k for k in per_kind if k != short and k.startswith(short)]
        if len(full) == 1:
            per_kind[full[0]] += per_kind.pop(short)
            processes[full[0]] += processes.pop(short)
    counted = sum(per_kind.values())
    print(f"\n{'kind of process':<44} {'processes':>9} {'CPU s':>8} {'share':>6} {'s each':>7}")
    for name, seconds in per_kind.most_common(25):
        share = seconds / counted
        print(f"{name:<44} {processes[name]:>9} {seconds:>8.0f} {share:>6.1%} {seconds / processes[name]:>7.1f}")
    cores = os.cpu_count() or 1
    print(f"\ncounted {counted:.0f} CPU s in {sum(processes.values())} processes; the machine: {cpu:.0f} CPU s")
    print(f"wall {wall:.0f} s on {cores} cores: the machine's CPU s / cores = {cpu / cores:.0f} s, the least wall")
    print(f"time this much work can take here ({cpu / (wall * cores):.0%} of the cores busy); exit code {code}")
    print_per_test(per_test_log)
    raise SystemExit(code)


def print_per_test(path: str, rows: int = 30) -> None:
    """The tests that cost the most CPU, with their share of what all tests cost, and the per-file totals."""
    with open(path, encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    if not records:
        return
    total = sum(r["cpu_s"] for r in records)
    print(f"\n{len(records)} tests charged {total:.0f} CPU s; the {rows} that cost most:")
    print(f"{'CPU s':>7} {'wall s':>7} {'share':>6}  test")
    for r in sorted(records, key=lambda r: -r["cpu_s"])[:rows]:
        print(f"{r['cpu_s']:>7.0f} {r['wall_s']:>7.0f} {r['cpu_s'] / total:>6.1%}  {r['test']}")
    per_file: Counter = Counter()
    for r in records:
        per_file[r["test"].split("::")[0]] += r["cpu_s"]
    print(f"\n{'CPU s':>7} {'share':>6}  test file")
    for name, seconds in per_file.most_common(rows):
        print(f"{seconds:>7.0f} {seconds / total:>6.1%}  {name}")
    print(f"(one JSON line per test: {path})")


if __name__ == "__main__":
    main()

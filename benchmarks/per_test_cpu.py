"""A pytest plugin that charges each test the CPU its process tree spent: `benchmarks/suite_cpu.py` loads it.

While a test runs (set-up to teardown), a thread samples the pytest process and every live descendant twice a
second: the session's Ray (raylet, GCS, the role actors), the `flexgrpo train` jobs a test starts, their Ray. A
process is charged the CPU it spent since the test began (all of it when it started during the test), as last
seen: a process that lives less than a sample interval is missed, and so are the daemons of `ray start`, which
leave the tree (the multi-node tests). Processes of tests side by side are not mixed up: each pytest-xdist
worker is its own tree. One JSON line per test goes to the file named by FLEXGRPO_TEST_CPU_LOG.
"""

from __future__ import annotations

import json
import os
import threading
import time

import psutil
import pytest

LOG_ENV = "FLEXGRPO_TEST_CPU_LOG"
SAMPLE_S = 0.5


def tree_cpu() -> dict[tuple[int, float], float]:
    """(pid, start time) -> user + system CPU seconds, for this process and its live descendants."""
    me = psutil.Process()
    seen = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                seen[(proc.pid, proc.create_time())] = times.user + times.system
        except psutil.Error:  # (exited meanwhile)
            continue
    return seen


class TreeMeter:
    """The CPU a process tree spends from `start()` to `stop()`, sampled by a thread."""

    def __init__(self) -> None:
        self.before = tree_cpu()
        self.last: dict[tuple[int, float], float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while True:
            self.last.update(tree_cpu())
            if self.done.wait(SAMPLE_S):
                return

    def stop(self) -> float:
        """-> CPU seconds spent since the meter was made."""
        self.done.set()
        self.thread.join()
        self.last.update(tree_cpu())
        return sum(cpu - self.before.get(key, 0.0) for key, cpu in self.last.items())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get(LOG_ENV)
    if not path:
        yield
        return
    meter, start = TreeMeter(), time.monotonic()
    yield
    record = {"test": item.nodeid, "cpu_s": meter.stop(), "wall_s": time.monotonic() - start}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")

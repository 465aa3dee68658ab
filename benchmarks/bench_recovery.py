"""Recovery time: the tiny recipe as a real `flexgrpo train` process tree, one process killed with kill -9 by pid
(or the driver sent SIGTERM) at step 5 of 12, checkpoints every 3 steps. For each: seconds from the kill to the
next trained step, and steps lost (trained again after a rollback). A killed driver is started again at once
with the same command, as SLURM or KubeRay would.

    python benchmarks/bench_recovery.py ["rollout-0" "driver (SIGTERM)" ...]
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("FLEXGRPO_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "flexgrpo"))

from cluster.embedded_redis import EmbeddedRedis  # noqa: E402
from flexgrpo.control_plane import ControlPlane  # noqa: E402
from tests.process_job import Job  # noqa: E402

STEPS, KILL_AT = 12, 5
VICTIMS = ("rollout-0", "reward-0", "learner-0", "redis", "driver (kill -9)", "driver (SIGTERM)")


def kill(job: Job, victim: str, control: ControlPlane) -> tuple[float, float]:
    """Kill `victim`; -> (the time of the kill, when the job went on: a driver is started again once gone)."""
    if victim.startswith("driver"):
        killed = time.time()
        job.process.send_signal(signal.SIGKILL if "kill" in victim else signal.SIGTERM)
        job.wait()
        job.start()
        return killed, time.time()
    if victim == "redis":
        pid = int(redis.Redis.from_url(control.url).info("server")["process_id"])
    else:
        pid = job.pid_of(victim, control)
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    return killed, killed


def measure(out: Path, name: str, victim: str) -> tuple[float, int, bool]:
    """-> (seconds from the kill to the next trained step, steps trained again, audit clean)"""
    job = Job(out, name, STEPS).start()
    killed, went_on = kill(job, victim, job.wait_for_step(KILL_AT))
    assert job.wait() == 0, job.tail()
    with EmbeddedRedis(job.run_dir / "redis") as url:  # the finished run's data, read back
        control = ControlPlane(url, job.run_dir.name)
        events = [e for e in control.ledger_log() if e["to"] == "trained"]
        clean = control.audit(STEPS).ok
    done_before = {e["step"] for e in events if e["time"] < went_on}
    after = [e for e in events if e["time"] >= went_on]  # (a SIGTERM lets the step in progress finish first)
    first = min(after, key=lambda e: e["time"])
    return first["time"] - killed, len(done_before) - first["step"], clean


def main() -> None:
    chosen = sys.argv[1:] or VICTIMS  # e.g. "driver (SIGTERM)"
    out = Path(tempfile.mkdtemp(prefix="bench_recovery_"))
    rows = [(victim, *measure(out, f"run{i}", victim)) for i, victim in enumerate(chosen)]
    print(f"\ntiny recipe, {STEPS} steps, killed at step {KILL_AT}, checkpoints every 3 steps")
    print("| killed | seconds to the next trained step | steps trained again | audit |")
    print("| --- | --- | --- | --- |")
    for victim, seconds, lost, clean in rows:
        print(f"| {victim} | {seconds:.1f} | {lost} | {'clean' if clean else 'FAILED'} |")


if __name__ == "__main__":
    main()

"""Recovery time: the tiny recipe as a real `flexgrpo train` process tree, one process killed with kill -9 by pid
(or the driver sent SIGTERM) at step 5 of 12, checkpoints every 3 steps. For each: seconds from the kill to the
next trained step, and steps lost (trained again after a rollback). A killed driver is started again at once
with the same command, as SLURM or KubeRay would.

The node rows run the job on a local multi-node Ray cluster (tests/local_cluster.py: one GPU per node, one spare
node) and remove the node of a worker instead; the scale-up row sends `scale --pool rollout --workers 2` at step
5 (the spare takes the new worker) and measures the seconds until the new worker's first group is scored.

    python benchmarks/bench_recovery.py ["rollout-0" "node of learner-0" "scale-up" ...]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("FLEXGRPO_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "flexgrpo"))

from cluster.embedded_redis import EmbeddedRedis  # noqa: E402
from flexgrpo.control_plane import ControlPlane  # noqa: E402
from tests.local_cluster import LocalCluster  # noqa: E402
from tests.process_job import Job  # noqa: E402
from tests.user_shell import FLEXGRPO  # noqa: E402

STEPS, KILL_AT = 12, 5
SCALE_UP_STEPS = 200  # the scale-up row's job: stopped once the new worker carried a group
VICTIMS = ("rollout-0", "reward-0", "learner-0", "redis", "driver (kill -9)", "driver (SIGTERM)")
VICTIMS += ("node of rollout-0", "node of reward-0", "node of learner-0", "scale-up")


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


def remove_node(job: Job, cluster: LocalCluster, victim: str) -> tuple[float, float]:
    """Remove the node of the actor `victim` names; -> (when, when)"""
    actor = victim.removeprefix("node of ")
    node = cluster.actors()[actor][1]
    removed = time.time()
    cluster.remove_node(node)
    return removed, removed


def scale_up(job: Job) -> float:
    """Ask for a second rollout worker; -> seconds until its first group was scored. Then stop the job (it runs
    SCALE_UP_STEPS, more than a new worker needs to start, load its model and receive the weights)."""
    sent = time.time()
    flexgrpo_command(job, "scale", "--pool", "rollout", "--workers", "2")
    control = job.control()
    while not (first := [e for e in control.ledger_log() if e["to"] == "sampled" and e["worker"] == "rollout-1"]):
        assert job.process.poll() is None, job.tail()
        time.sleep(0.2)
    flexgrpo_command(job, "stop")
    return first[0]["time"] - sent


def flexgrpo_command(job: Job, *args: str) -> None:
    subprocess.run([FLEXGRPO, "command", str(job.run_dir), *args], check=True, capture_output=True, timeout=180)


def measure(out: Path, name: str, victim: str) -> tuple[float, int, bool]:
    """-> (seconds from the kill to the next trained step, steps trained again, audit clean); for scale-up,
    the seconds to the new worker's first group and 0"""
    with ExitStack() as stack:
        on_cluster = victim.startswith("node of") or victim == "scale-up"
        cluster = stack.enter_context(LocalCluster(worker_nodes=4)) if on_cluster else None
        extra = [f"cluster.address={cluster.address}"] if cluster else []
        steps = SCALE_UP_STEPS if victim == "scale-up" else STEPS
        job = Job(out, name, steps, *extra).start(env=cluster.env if cluster else None)
        control = job.wait_for_step(KILL_AT)
        if victim == "scale-up":
            seconds = scale_up(job)
            killed = went_on = 0.0
        elif cluster:
            killed, went_on = remove_node(job, cluster, victim)
        else:
            killed, went_on = kill(job, victim, control)
        assert job.wait() == 0, job.tail()
    with EmbeddedRedis(job.run_dir / "redis") as url:  # the finished run's data, read back
        control = ControlPlane(url, job.run_dir.name)
        events = [e for e in control.ledger_log() if e["to"] == "trained"]
        info = control.run_info()  # (the scale-up row's job was stopped)
        clean = control.audit(int(info["step"]), finished=info["status"] == "finished").ok
    if victim == "scale-up":
        return seconds, 0, clean
    done_before = {e["step"] for e in events if e["time"] < went_on}
    after = [e for e in events if e["time"] >= went_on]  # (a SIGTERM lets the step in progress finish first)
    first = min(after, key=lambda e: e["time"])
    return first["time"] - killed, len(done_before) - first["step"], clean


def main() -> None:
    chosen = sys.argv[1:] or VICTIMS  # e.g. "driver (SIGTERM)"
    out = Path(tempfile.mkdtemp(prefix="bench_recovery_"))
    print(f"tiny recipe, {STEPS} steps, killed at step {KILL_AT}, checkpoints every 3 steps")
    print(
        "| killed (scale-up: seconds to the new worker's first group) | seconds to the next trained step | "
        "steps trained again | audit |"
    )
    print("| --- | --- | --- | --- |", flush=True)
    for i, victim in enumerate(chosen):  # a row as soon as it is measured
        seconds, lost, clean = measure(out, f"run{i}", victim)
        print(f"| {victim} | {seconds:.1f} | {lost} | {'clean' if clean else 'FAILED'} |", flush=True)


if __name__ == "__main__":
    main()

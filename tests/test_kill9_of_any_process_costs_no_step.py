"""Fault injection with real processes: a tiny job runs as `flexgrpo train` in its own process tree, and one of
its processes is killed with kill -9 by pid (a rollout worker, a reward worker, a learner rank, the embedded
Redis, the driver) or the driver gets SIGTERM. After each, the job (or the same command run again) finishes with
metrics for every step exactly once, and `flexgrpo audit` reports no group lost and none trained twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import psutil
import pytest
import redis

from orchestration.checkpoints import PARTIAL
from tests.process_job import Job
from tests.user_shell import FLEXGRPO

pytestmark = pytest.mark.long
STEPS = 12  # checkpoints every 3 steps: a learner restart goes back to the last multiple of 3
VICTIMS = {"rollout-0": 2, "reward-0": 4, "redis": 6, "learner-0": 8}  # who is killed, once the job reached this step
DRIVER_KILLS = {"kill9": 3, "sigterm": 7}  # how the driver is ended, once the job reached this step


def assert_every_step_once_and_audit_clean(job: Job) -> list[dict]:
    """-> the run's metrics rows"""
    rows = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS)), job.tail()
    audit = subprocess.run([FLEXGRPO, "audit", str(job.run_dir)], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert re.search(r"groups lost:\s+0\n", audit.stdout) and re.search(r"trained twice:\s+0\n", audit.stdout)
    return rows


def test_job_survives_kill9_of_each_worker_and_of_redis(tmp_path):
    """One job, four victims in turn: each kill lands while the job trains, and the job still finishes every
    step exactly once. A worker or a learner rank is restarted by the recovery; Redis is waited out."""
    job = Job(tmp_path, "victims", STEPS).start()
    recoveries = 0
    for victim, step in VICTIMS.items():
        control = job.wait_for_step(step)
        if victim == "redis":
            pid = int(redis.Redis.from_url(control.url).info("server")["process_id"])
        else:
            pid = job.pid_of(victim, control)
        os.kill(pid, signal.SIGKILL)
        if victim != "redis":  # the kill is noticed and recovered from before the next victim is chosen
            deadline = time.monotonic() + 120
            while int(job.info(control).get("recoveries", 0)) <= recoveries:
                assert time.monotonic() < deadline and job.process.poll() is None, f"{victim}: {job.tail()}"
                time.sleep(0.2)
            recoveries = int(job.info(control)["recoveries"])
    assert job.wait() == 0, job.tail()
    rows = assert_every_step_once_and_audit_clean(job)
    assert rows[-1]["system/recoveries"] >= 3


def test_learner_killed_while_it_writes_a_checkpoint(tmp_path):
    """A learner rank lost inside a checkpoint (here held open 4 s) is recovered like one lost inside a step:
    the learner restarts from the checkpoint before (the partial one is never read) and the job finishes."""
    job = Job(tmp_path, "in_checkpoint", STEPS, "holds.checkpoint_s=4").start()
    control = job.wait_for_step(1)
    partial = job.run_dir / "checkpoints" / f"step_000006{PARTIAL}"
    deadline = time.monotonic() + 180
    while not partial.is_dir():  # the second checkpoint: there is one to restart from
        assert time.monotonic() < deadline and job.process.poll() is None, job.tail()
        time.sleep(0.1)
    os.kill(job.pid_of("learner-0", control), signal.SIGKILL)
    assert job.wait() == 0, job.tail()
    rows = assert_every_step_once_and_audit_clean(job)
    assert rows[-1]["system/recoveries"] >= 1


def test_rollout_worker_killed_while_it_joins_the_weight_sync_group(tmp_path):
    """A worker lost inside the weight-sync rendezvous (each join held open 4 s here) costs at most the
    rendezvous' timeout (cluster.weight_sync_join_s, 20 s here; the learner used to wait 600 s): the group is
    built without it, then again with it once Ray restarted it, and the job finishes every step once."""
    job = Job(tmp_path, "in_join", STEPS, "holds.join_s=4", "cluster.weight_sync_join_s=20").start()
    control = job.wait_for_step(2)
    first = job.pid_of("rollout-0", control)
    os.kill(first, signal.SIGKILL)
    os.kill(job.pid_in_call("RolloutWorker.join_weight_sync", not_one_of={first}), signal.SIGKILL)  # back, joining
    job.wait_for_step(int(control.run_info()["step"]) + 1, timeout_s=150)
    assert job.wait() == 0, job.tail()
    rows = assert_every_step_once_and_audit_clean(job)
    assert rows[-1]["system/recoveries"] >= 1
    assert "lost while joining the weight-sync group" in (job.run_dir / "train.log").read_text()


def test_rollout_worker_killed_five_times_within_a_restart_window(tmp_path):
    """The restart budget is a rate: 2 per 8 s here, and 5 kills spaced 9 s apart all recover."""
    job = Job(tmp_path, "repeat", 200, "cluster.max_restarts=2", "cluster.restart_window_s=8", "holds.rollout_s=0.5")
    job.start()
    control = job.wait_for_step(2)
    killed: set[int] = set()
    for _ in range(5):
        pid = job.pid_of("rollout-0", control, not_one_of=killed)
        killed.add(pid)
        os.kill(pid, signal.SIGKILL)
        time.sleep(9)
        assert job.process.poll() is None, job.tail()
    assert int(control.run_info()["recoveries"]) >= 5
    control.send_command("stop")  # its outcome is read from the audit: the job's Redis ends with the job
    assert job.wait() == 0, job.tail()
    audit = subprocess.run([FLEXGRPO, "audit", str(job.run_dir)], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0 and "(stopped)" in audit.stdout and "audit passed" in audit.stdout, audit.stdout


def test_driver_killed_then_the_same_command_finishes_the_run(tmp_path):
    """The driver is killed with kill -9, the same command resumes; then it gets SIGTERM (checkpoint, stop, exit
    0), the same command resumes again and finishes. After each end nothing the driver started is left."""
    job = Job(tmp_path, "driver", STEPS).start()
    for how, step in DRIVER_KILLS.items():
        job.wait_for_step(step)
        started = [p for p in psutil.Process(job.process.pid).children(recursive=True)]
        job.process.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGTERM)
        code = job.wait()
        if how == "sigterm":
            assert code == 0 and json.loads((job.run_dir / "status.json").read_text())["status"] == "stopped"
        deadline = time.monotonic() + 10
        while alive := [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
            assert time.monotonic() < deadline, f"{how}: left behind: {[(p.pid, p.name()) for p in alive]}"
            time.sleep(0.2)
        (job.run_dir / "redis_url").unlink()  # so the next wait reads the address of the next job's Redis
        job.start()  # the same command again: resumes from the checkpoint
    assert job.wait() == 0, job.tail()
    assert_every_step_once_and_audit_clean(job)


def test_a_second_job_on_the_same_run_directory_refuses_and_touches_nothing(tmp_path):
    first = Job(tmp_path, "owned", STEPS).start()
    first.wait_for_step(2)
    own_logs = {"metrics.jsonl", "status.json", "train.log", "workers.log"}  # the first job writes these as it runs
    files = {p: p.stat().st_mtime_ns for p in first.run_dir.glob("*") if p.is_file() and p.name not in own_logs}
    second = subprocess.run(first.args, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0
    message = [line for line in second.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(message) == 1 and f"pid {first.process.pid}" in message[0], second.stderr
    assert "Traceback" not in second.stderr
    assert {p: p.stat().st_mtime_ns for p in files} == files, "the second job wrote into the first one's run directory"
    assert message[0].split("error: ", 1)[-1] not in (first.run_dir / "train.log").read_text(), "it logged there"
    assert first.wait() == 0, first.tail()
    assert_every_step_once_and_audit_clean(first)

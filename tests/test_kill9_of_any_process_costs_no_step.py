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

from tests.process_job import FLEXGRPO, Job

pytestmark = pytest.mark.slow
STEPS, KILL_AT = 9, 4  # checkpoints every 3 steps: a learner restart goes back to step 3


def assert_every_step_once_and_audit_clean(job: Job) -> list[dict]:
    """-> the run's metrics rows"""
    rows = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS)), job.tail()
    audit = subprocess.run([FLEXGRPO, "audit", str(job.run_dir)], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert re.search(r"groups lost:\s+0\n", audit.stdout) and re.search(r"trained twice:\s+0\n", audit.stdout)
    return rows


@pytest.mark.parametrize("victim", ["rollout-0", "reward-0", "learner-0", "redis"])
def test_job_survives_kill9_of_a_worker_or_redis(tmp_path, victim):
    job = Job(tmp_path, "victim", STEPS).start()
    control = job.wait_for_step(KILL_AT)
    if victim == "redis":
        pid = int(redis.Redis.from_url(control.url).info("server")["process_id"])
    else:
        pid = job.pid_of(victim, control)
    os.kill(pid, signal.SIGKILL)
    assert job.wait() == 0, job.tail()
    rows = assert_every_step_once_and_audit_clean(job)
    if victim != "redis":
        assert rows[-1]["system/recoveries"] >= 1


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
    control.wait_for_outcome(control.send_command("stop"), timeout_s=120)
    assert job.wait() == 0, job.tail()
    audit = subprocess.run([FLEXGRPO, "audit", str(job.run_dir)], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0 and "(stopped)" in audit.stdout and "audit passed" in audit.stdout, audit.stdout


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_driver_killed_then_the_same_command_finishes_the_run(tmp_path, how):
    job = Job(tmp_path, "driver", STEPS).start()
    job.wait_for_step(KILL_AT)
    started = [p for p in psutil.Process(job.process.pid).children(recursive=True)]
    job.process.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGTERM)
    code = job.wait()
    if how == "sigterm":
        assert code == 0 and json.loads((job.run_dir / "status.json").read_text())["status"] == "stopped"
    deadline = time.monotonic() + 10
    while alive := [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, f"left behind: {[(p.pid, p.name()) for p in alive]}"
        time.sleep(0.2)

    assert job.start().wait() == 0, job.tail()  # the same command again: resumes from the checkpoint
    assert_every_step_once_and_audit_clean(job)


def test_a_second_job_on_the_same_run_directory_refuses_and_touches_nothing(tmp_path):
    first = Job(tmp_path, "owned", STEPS).start()
    first.wait_for_step(2)
    files = {p: p.stat().st_mtime_ns for p in first.run_dir.glob("*") if p.is_file() and p.name != "metrics.jsonl"}
    second = subprocess.run(first.args, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0
    message = [line for line in second.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(message) == 1 and f"pid {first.process.pid}" in message[0], second.stderr
    assert "Traceback" not in second.stderr
    assert {p: p.stat().st_mtime_ns for p in files if p.name != "status.json"} == {
        p: t for p, t in files.items() if p.name != "status.json"
    }, "the second job wrote into the first one's run directory"
    assert first.wait() == 0, first.tail()
    assert_every_step_once_and_audit_clean(first)

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
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from flexgrpo.control_plane import ControlPlane

pytestmark = pytest.mark.slow
FLEXGRPO = str(Path(sys.executable).with_name("flexgrpo"))
STEPS, KILL_AT = 9, 4  # checkpoints every 3 steps: a learner restart goes back to step 3


class Job:
    """One `flexgrpo train` process tree on a run directory, and the run's control plane."""

    def __init__(self, tmp_path: Path, name: str, *overrides: str) -> None:
        self.run_dir, self.log = tmp_path / name, tmp_path / f"{name}.log"
        self.args = [
            FLEXGRPO,
            "train",
            f"run.output_dir={tmp_path}",
            f"run.name={name}",
            f"run.num_steps={STEPS}",
            "run.checkpoint_every=3",
            "grpo.groups_per_step=1",
            "grpo.group_size=4",
            *overrides,
        ]
        self.process: subprocess.Popen | None = None

    def start(self) -> Job:
        env = os.environ | {"RAY_AUTH_MODE": "disabled"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait(self, timeout_s: float = 400) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the job did not end in {timeout_s} s; log:\n{self.tail()}") from None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def control(self) -> ControlPlane:
        url_file = self.run_dir / "redis_url"
        deadline = time.monotonic() + 120
        while not url_file.is_file():
            assert time.monotonic() < deadline and self.process.poll() is None, self.tail()
            time.sleep(0.2)
        return ControlPlane(url_file.read_text().strip(), self.run_dir.name, outage_timeout_s=60)

    def wait_for_step(self, step: int, timeout_s: float = 300) -> ControlPlane:
        control, deadline = self.control(), time.monotonic() + timeout_s
        while int(control.run_info().get("step", 0)) < step:
            assert time.monotonic() < deadline and self.process.poll() is None, self.tail()
            time.sleep(0.1)
        return control

    def pid_of(self, worker: str, control: ControlPlane, not_one_of: set[int] = frozenset()) -> int:
        """The pid in the worker's own heartbeat (a restarted worker: once it beats with its new pid)."""
        deadline = time.monotonic() + 60
        while True:
            beat = control.heartbeats().get(worker)
            if beat is not None and int(beat["pid"]) not in not_one_of and psutil.pid_exists(int(beat["pid"])):
                return int(beat["pid"])
            assert time.monotonic() < deadline and self.process.poll() is None, f"no heartbeat from {worker}"
            time.sleep(0.2)


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
    job = Job(tmp_path, "victim").start()
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
    job = Job(tmp_path, "repeat", "cluster.max_restarts=2", "cluster.restart_window_s=8", "holds.rollout_s=0.5")
    job.args[job.args.index(f"run.num_steps={STEPS}")] = "run.num_steps=200"  # long enough for five kills
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
    job = Job(tmp_path, "driver").start()
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

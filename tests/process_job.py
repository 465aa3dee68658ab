"""A `flexgrpo train` job as a real process tree, for fault injection (tests and the recovery benchmark)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from flexgrpo.control_plane import ControlPlane, ControlPlaneUnavailable
from tests.user_shell import FLEXGRPO


class Job:
    """One `flexgrpo train` process tree on a run directory, and the run's control plane. A job a test left
    running is ended after the test (`end_leftovers`, from conftest)."""

    started: list[Job] = []

    def __init__(self, out: Path, name: str, steps: int, *overrides: str) -> None:
        self.run_dir, self.log = out / name, out / f"{name}.log"
        self.args = [
            FLEXGRPO,
            "train",
            f"run.output_dir={out}",
            f"run.name={name}",
            f"run.num_steps={steps}",
            "run.checkpoint_every=3",
            "grpo.groups_per_step=1",
            "grpo.group_size=4",
            *overrides,
        ]
        self.process: subprocess.Popen | None = None

    def start(self, env: dict[str, str] | None = None) -> Job:
        """env: the job's environment (default: this process's)."""
        env = (env or os.environ) | {"RAY_AUTH_MODE": "disabled"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        Job.started.append(self)
        return self

    @classmethod
    def end_leftovers(cls) -> None:
        """End every job still running, with all it started (a failed test must not load the next ones)."""
        while cls.started:
            job = cls.started.pop()
            if job.process.poll() is None:
                kill_tree(job.process)

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

    def info(self, control: ControlPlane) -> dict[str, str]:
        """The run's registry entry; when its Redis stays unreachable, fails with the job's log (the job may
        have ended, taking its embedded Redis with it)."""
        try:
            return control.run_info()
        except ControlPlaneUnavailable as err:
            raise AssertionError(f"{err}; job exit code {self.process.poll()}; log:\n{self.tail()}") from None

    def wait_for_step(self, step: int, timeout_s: float = 300) -> ControlPlane:
        control, deadline = self.control(), time.monotonic() + timeout_s
        while int(self.info(control).get("step", 0)) < step:
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

    def pid_in_call(self, call: str, not_one_of: set[int] = frozenset(), timeout_s: float = 120) -> int:
        """The pid of the job's process that runs `call` (e.g. RolloutWorker.join_weight_sync) now: Ray titles an
        actor's process `ray::<Class>.<method>` while it runs a call (with one worker of the class, that worker)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for proc in psutil.Process(self.process.pid).children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if title.startswith(f"ray::{call}") and proc.pid not in not_one_of:
                    return proc.pid
            assert time.monotonic() < deadline and self.process.poll() is None, f"nothing ran {call}"
            time.sleep(0.05)


def wait_until(what: str, condition, job: Job, timeout_s: float = 180) -> None:
    """Poll `condition()` until true; fails naming `what` (with the job's log) on timeout or if the job ended."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline and job.process.poll() is None, f"{what}:\n{job.tail()}"
        time.sleep(0.5)


def sampled_by(control: ControlPlane) -> dict[str, int]:
    """Groups sampled by each rollout worker so far, from the ledger."""
    counts: dict[str, int] = {}
    for event in control.ledger_log():
        if event["to"] == "sampled":
            counts[event["worker"]] = counts.get(event["worker"], 0) + 1
    return counts


def kill_tree(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End `proc` and every process it started, by pid (other jobs on this machine run Ray too)."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)

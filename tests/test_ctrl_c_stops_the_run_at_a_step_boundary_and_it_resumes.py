"""Ctrl-C on `flexgrpo train` as a terminal sends it (SIGINT to the job's whole process group: the driver, Ray's
daemons, the embedded Redis), from a shell with only PATH and HOME. The first Ctrl-C checkpoints and stops at the
next step boundary (exit 0, status "stopped"); a second one stops at once (exit 130, one error line, the
traceback in RUN_DIR/train.log only). Never a traceback on the terminal; the same command then finishes the run
and `flexgrpo audit` is clean."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from tests.process_job import Job
from tests.user_shell import CLEAN_ENV, FLEXGRPO, REPO

pytestmark = pytest.mark.long
STEPS = 8
FIRST_LINE = "Ctrl-C: checkpointing and stopping at the end of this step"


def start(job: Job, attempt: str, *overrides: str) -> None:
    """The job's command (with `overrides` after it) in a session of its own (its process group stands for the
    terminal's foreground job); stdout to <attempt>.out, stderr to <attempt>.err (job.log, for job.tail)."""
    out, job.log = job.run_dir.parent / f"{attempt}.out", job.run_dir.parent / f"{attempt}.err"
    with open(out, "wb") as stdout, open(job.log, "wb") as stderr:
        job.process = subprocess.Popen(
            [*job.args, *overrides], cwd=REPO, env=CLEAN_ENV, stdout=stdout, stderr=stderr, start_new_session=True
        )


def ctrl_c(job: Job) -> None:
    os.killpg(job.process.pid, signal.SIGINT)  # the job's pid is its process group's id


def terminal(job: Job) -> tuple[str, str]:
    """(stdout, stderr) of the job's last attempt, checked for tracebacks (Ray prints remote ones without the word)."""
    out, err = job.log.with_suffix(".out").read_text(errors="replace"), job.log.read_text(errors="replace")
    for text in (out, err):
        assert "Traceback" not in text and '  File "' not in text, err[-4000:]
    return out, err


def status(job: Job) -> dict:
    return json.loads((job.run_dir / "status.json").read_text())


def test_ctrl_c_once_then_twice_then_the_same_command_finishes(tmp_path):
    job = Job(tmp_path, "ctrl_c", STEPS, "sampler.num_steps=4", "eval.every=0", "run.checkpoint_every=0")

    start(job, "once")  # one Ctrl-C: checkpoint at the step boundary, exit 0
    job.wait_for_step(2)
    ctrl_c(job)
    assert job.wait() == 0, job.tail()
    out, err = terminal(job)
    assert err.count(FIRST_LINE) == 1 and "(stopped)" in out, err[-4000:]
    stopped = status(job)
    assert stopped["status"] == "stopped" and stopped["stop_reason"] == "Ctrl-C", stopped
    step = int(stopped["step"])
    assert 2 <= step < STEPS, stopped
    checkpoints = job.run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step_{step:06d}"
    assert "SIGINT" not in (job.run_dir / "redis" / "redis.log").read_text(), "the terminal's Ctrl-C reached Redis"

    (job.run_dir / "redis_url").unlink()  # so that the next wait reads the next job's address
    # two Ctrl-C: stop now, without a checkpoint, exit 130. The checkpoint the first one asks for is held open 4 s,
    # so the second lands while the loop still runs (without the hold, a short step could end the loop before it)
    start(job, "twice", "holds.checkpoint_s=4")
    job.wait_for_step(step + 1)
    ctrl_c(job)
    deadline = time.monotonic() + 60
    while FIRST_LINE not in job.log.read_text(errors="replace"):  # the first was handled: the second is another
        assert time.monotonic() < deadline and job.process.poll() is None, job.tail()
        time.sleep(0.05)
    ctrl_c(job)
    assert job.wait() == 130, job.tail()
    _, err = terminal(job)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err[-4000:]
    assert errors[0].startswith("error: interrupted: Ctrl-C twice: stopped at once, without a final checkpoint"), errors
    log = (job.run_dir / "train.log").read_text()
    assert "Traceback" in log and "KeyboardInterrupt: Ctrl-C twice" in log, log[-4000:]
    interrupted = status(job)
    assert interrupted["status"] == "stopped" and interrupted["stop_reason"].startswith("Ctrl-C twice"), interrupted

    (job.run_dir / "redis_url").unlink()
    start(job, "resumed")  # the same command again: resumes from the last checkpoint and finishes
    assert job.wait() == 0, job.tail()
    terminal(job)
    finished = status(job)
    assert finished["status"] == "finished" and "stop_reason" not in finished, finished
    rows = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS))
    audit = subprocess.run([FLEXGRPO, "audit", str(job.run_dir)], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert re.search(r"groups lost:\s+0\n", audit.stdout) and re.search(r"trained twice:\s+0\n", audit.stdout)

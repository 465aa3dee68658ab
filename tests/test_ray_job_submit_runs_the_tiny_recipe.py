"""The real entry points of a cluster deployment: a head started with `ray start --head` (with its dashboard, the
job server), and the tiny recipe sent to it with `ray job submit -- flexgrpo train ... cluster.address=auto`. The
job must finish and leave its metrics in the run directory. Everything this test starts is ended by pid (the
process tree of `ray start`): other jobs on this machine may run Ray too, so never `ray stop`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.process_job import kill_tree

pytestmark = pytest.mark.long

REPO = Path(__file__).resolve().parents[1]
RAY = str(REPO / ".venv" / "bin" / "ray")
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_dashboard(url: str, head: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray dashboard (job server) at {url} did not answer in {timeout_s:.0f} s")
        time.sleep(0.5)


def test_ray_job_submit_of_the_tiny_recipe_finishes_with_its_metrics(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="fg-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    env = os.environ | {"RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    dashboard = free_port()
    ports = {  # every port of the head picked free: other clusters may run on this machine
        "--port": free_port(),
        "--dashboard-port": dashboard,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus=2", "--num-gpus=3", "--include-dashboard=true"]
        + [f"{flag}={port}" for flag, port in ports.items()],
        cwd=REPO,
        env=env,
        stdout=open(tmp_path / "head.log", "wb"),  # noqa: SIM115  (closed with the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_dashboard(url, head)
        deadline = time.monotonic() + 120
        while True:
            submit = subprocess.run(
                [RAY, "job", "submit", "--address", url, "--"]
                + [str(REPO / ".venv" / "bin" / "flexgrpo"), "train", str(REPO / "configs" / "tiny.yaml")]
                + [
                    f"run.num_steps={STEPS}",
                    f"run.output_dir={tmp_path}",
                    "run.name=submitted",
                    "grpo.group_size=4",
                    "grpo.groups_per_step=2",
                    "cluster.address=auto",
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            # the job server answers before the head's job agent is up (a busy machine): nothing was submitted
            if "No available agent" not in submit.stdout + submit.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        kill_tree(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    out = submit.stdout + submit.stderr
    assert submit.returncode == 0, out[-6000:]
    assert "succeeded" in out, out[-6000:]  # the job's final state, as the job server reports it
    run_dir = tmp_path / "submitted"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS))
    assert all(isinstance(r["reward_mean"], float) for r in rows)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"

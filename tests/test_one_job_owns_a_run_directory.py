"""Two processes on one run directory: the second fails at once with a one-line error naming the owner's pid and
host, and touches no file; the lock dies with its owner (kill -9 included). The Redis lease is renewed while the
owner runs and released when it ends."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane, RunOwnedError
from orchestration.ownership import RunOwnership

REPO = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from orchestration.ownership import RunOwnership
with RunOwnership(sys.argv[1]):
    (__import__("pathlib").Path(sys.argv[1]) / "metrics.jsonl").write_text("first job\\n")
    print("owned", flush=True)
    time.sleep(600)
"""


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture
def first_job(tmp_path):
    run_dir = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "owned"
        yield run_dir, holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_job_fails_at_once_naming_the_owner_and_touches_nothing(first_job):
    run_dir, holder = first_job
    before = snapshot(run_dir)
    start = time.monotonic()
    with pytest.raises(RunOwnedError) as err:
        with RunOwnership(run_dir):
            pytest.fail("the second job got in")
    assert time.monotonic() - start < 0.5
    message = str(err.value)
    assert "\n" not in message and f"in use by pid {holder.pid} on host {socket.gethostname()}" in message
    assert snapshot(run_dir) == before


def test_the_lock_dies_with_its_owner_on_kill_9(first_job):
    run_dir, holder = first_job
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunOwnership(run_dir) as owner:
        assert f'"pid": {os.getpid()}' in (run_dir / "owner.lock").read_text()
        assert owner.owner["pid"] == os.getpid()


def test_the_lease_is_renewed_while_the_job_runs_and_released_at_its_end(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        control = ControlPlane(url, "run")
        with RunOwnership(tmp_path / "run") as owner:
            owner.start_lease(control, ttl_s=0.6)
            time.sleep(1.0)  # longer than the TTL: only renewals keep it alive
            assert control.lease()["owner"] == owner.owner
            with pytest.raises(RunOwnedError, match=f"owned by pid {os.getpid()}"):
                ControlPlane(url, "run").acquire_lease({"host": "other", "pid": 1}, ttl_s=5)
            owner.stop_lease()
            assert control.lease() is None
            owner.start_lease(control, ttl_s=0.6)
        assert control.lease() is None and not owner.lease_lost.is_set()


def test_a_lease_taken_over_is_reported_not_renewed(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        control = ControlPlane(url, "run")
        with RunOwnership(tmp_path / "run") as owner:
            owner.start_lease(control, ttl_s=0.3)
            control.redis.set("flexgrpo:run:run:lease", '{"host": "other", "pid": 1}', px=5000)  # a usurper
            assert owner.lease_lost.wait(timeout=2)
            assert control.lease()["owner"] == {"host": "other", "pid": 1}
        assert control.lease()["owner"] == {"host": "other", "pid": 1}  # not ours to release

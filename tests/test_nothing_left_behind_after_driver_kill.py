"""kill -9 of a driver: within 10 s no process it started is alive (the embedded Redis, which rewrites its title
over its environment; a child in a session of its own, as Ray's daemons are; a double-forked daemon that no
longer descends from the driver), checked by listing /proc for the driver's FLEXGRPO_OWNER token and pids."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestration.watchdog import tagged_processes

REPO = Path(__file__).resolve().parents[1]

FAKE_DRIVER = """
import subprocess, sys, time
from cluster.embedded_redis import EmbeddedRedis
from orchestration.watchdog import start_watchdog

token = start_watchdog()
redis = EmbeddedRedis(sys.argv[1])
redis.start()
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
daemon = subprocess.run(
    [sys.executable, "-c", DAEMON], stdout=subprocess.PIPE, text=True, check=True
).stdout.strip()  # its parent exits at once: it is re-parented away from the driver
print(token, redis.process.pid, sleeper.pid, daemon, flush=True)
time.sleep(600)
"""
DAEMON = """
import os, sys, time
if os.fork():
    os._exit(0)
print(os.getpid(), flush=True)
sys.stdout.close()
os.close(1)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_kill_9_of_the_driver_leaves_no_process_behind(tmp_path):
    script = tmp_path / "fake_driver.py"
    script.write_text(f"DAEMON = {DAEMON!r}\n" + FAKE_DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "FLEXGRPO_OWNER"} | {"PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "redis")], stdout=subprocess.PIPE, text=True, env=env
    )
    token, started = "", set()
    try:
        token, *pids = driver.stdout.readline().split()
        started = {int(p) for p in pids}
        assert len(started) == 3 and all(alive(p) for p in started)
        assert started - {int(pids[0])} <= tagged_processes(token)  # the token reaches what the driver starts
        driver.send_signal(signal.SIGKILL)
        driver.wait()  # reaped here, so the watchdog sees the pid disappear (a zombie counts as gone too)
        deadline = time.monotonic() + 10
        while tagged_processes(token) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert tagged_processes(token) == set()
        assert not any(alive(p) for p in started)
    finally:
        driver.kill()
        for pid in (tagged_processes(token) if token else set()) | {p for p in started if alive(p)}:
            os.kill(pid, signal.SIGKILL)


def test_a_zombie_driver_counts_as_gone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLEXGRPO_OWNER"} | {"PYTHONPATH": str(REPO)}
    code = (
        "from orchestration.watchdog import start_watchdog; import subprocess, sys, time\n"
        "print(start_watchdog(), flush=True)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\ntime.sleep(600)"
    )
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    token = driver.stdout.readline().strip()
    try:
        deadline = time.monotonic() + 10
        while not tagged_processes(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(tagged_processes(token)) == 1
        os.kill(driver.pid, signal.SIGKILL)  # not reaped: the driver stays a zombie of this test
        deadline = time.monotonic() + 10
        while tagged_processes(token) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert tagged_processes(token) == set()
    finally:
        driver.kill()
        driver.wait()


def test_the_embedded_redis_dies_with_its_parent_even_without_a_watchdog(tmp_path):
    code = (
        "import sys, time; from cluster.embedded_redis import EmbeddedRedis\n"
        "server = EmbeddedRedis(sys.argv[1]); server.start(); print(server.process.pid, flush=True); time.sleep(600)"
    )
    env = {k: v for k, v in os.environ.items() if k != "FLEXGRPO_OWNER"} | {"PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "redis")], stdout=subprocess.PIPE, text=True, env=env
    )
    redis_pid = int(parent.stdout.readline())
    try:
        assert alive(redis_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while alive(redis_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(redis_pid)
    finally:
        if alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)

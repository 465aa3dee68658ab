"""Nothing left behind: whatever a driver started dies with it, kill -9 included.

`start_watchdog()` (the CLI's `train`, before anything starts) puts a random token in FLEXGRPO_OWNER, which
every child process inherits (the embedded Redis, the local Ray's daemons and workers, whatever they start, even
in a session of their own), and spawns a detached `python -m orchestration.watchdog PID TOKEN`. While the driver
lives, the watchdog remembers the driver's descendants and every process whose environment holds the token; when
the driver is gone, it SIGTERMs those still alive (and their descendants), SIGKILLs the survivors after 3 s, and
exits. Linux only (it reads /proc).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV = "FLEXGRPO_OWNER"  # colon-separated tokens: a job started by another job carries both
POLL_S = 0.5
GRACE_S = 3.0


def start_watchdog() -> str:
    """Tag this process's future children with a new token and watch this process; returns the token."""
    token = secrets.token_hex(8)
    inherited = os.environ.get(ENV)
    env = {k: v for k, v in os.environ.items() if k != ENV}  # the watchdog must not match its own token
    subprocess.Popen(
        [sys.executable, "-m", "orchestration.watchdog", str(os.getpid()), token],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.environ[ENV] = f"{inherited}:{token}" if inherited else token
    return token


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live process (zombies left out), from /proc/PID/stat."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ..., starttime
        if fields[0] not in ("Z", "X"):
            found[int(entry.name)] = (int(fields[1]), fields[19])
    return found


def _descendants(roots: set[int], procs: dict[int, tuple[int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def tagged_processes(token: str, procs: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """Live processes whose environment holds `token`, not this one. A process that rewrote its title over its
    environment (redis-server, setproctitle) no longer shows it: the watchdog also follows the driver's tree."""
    tag, found = f"{ENV}=".encode(), set()
    for pid in procs if procs is not None else _processes():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        for var in environ.split(b"\0"):
            if var.startswith(tag) and token.encode() in var[len(tag) :].split(b":"):
                found.add(pid)
                break
    return found - {os.getpid()}


def end_processes(token: str, known: dict[int, str], rounds: int = 5) -> int:
    """SIGTERM the known processes still alive (same start time: no reused pid), their descendants and every
    tagged process; SIGKILL the survivors after GRACE_S; repeated while new ones appear (a daemon may start a
    worker while dying). Returns how many were signalled."""
    ended: set[int] = set()
    for _ in range(rounds):
        procs = _processes()
        pids = {p for p, start in known.items() if procs.get(p, (0, None))[1] == start}
        pids = (pids | _descendants(pids, procs) | tagged_processes(token, procs)) - {os.getpid()}
        if not pids:
            break
        ended |= pids
        known |= {p: procs[p][1] for p in pids}
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and pids & _processes().keys():
            time.sleep(0.1)
        _signal_all(pids & _processes().keys(), signal.SIGKILL)
    return len(ended)


def _signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def watch(driver_pid: int, token: str) -> None:
    """While the driver lives, remember its descendants and tagged processes; when it is gone (pid reuse and
    zombies included), end them."""
    procs = _processes()
    started, known = procs.get(driver_pid, (0, None))[1], {}
    while started is not None and procs.get(driver_pid, (0, None))[1] == started:
        for pid in (_descendants({driver_pid}, procs) | tagged_processes(token, procs)) - {os.getpid()}:
            known[pid] = procs[pid][1]
        time.sleep(POLL_S)
        procs = _processes()
    ended = end_processes(token, known)
    if ended:
        print(f"flexgrpo watchdog: driver {driver_pid} is gone; ended {ended} processes it started", file=sys.stderr)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])

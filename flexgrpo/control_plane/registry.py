"""The run registry and the run's status: the set of runs (flexgrpo:runs), each run's hash R (see keys.py),
what `flexgrpo status` shows, and RUN_DIR/status.json, the copy of that status which outlives the job's Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flexgrpo.control_plane import keys
from flexgrpo.control_plane.commands import Commands
from flexgrpo.control_plane.connection import Connection
from flexgrpo.control_plane.heartbeats import read_heartbeats
from flexgrpo.control_plane.lease import Lease, ago

LIVE_STATUSES = ("starting", "running", "paused")  # statuses that need a live lease to be true
JSON_FIELDS = ("pools", "rewards")  # run fields that hold JSON objects (per-pool figures, the reward spec)
STATUS_FILE = "status.json"


class RunRegistry:
    """The registry entry of one run."""

    def __init__(self, connection: Connection) -> None:
        self._conn, self.run, self._key = connection, connection.run, keys.run(connection.run)

    def register(self, config: dict) -> None:
        self._conn.redis.sadd(keys.RUNS, self.run)
        self._conn.redis.hsetnx(self._key, "step", 0)
        self._conn.redis.hdel(self._key, "stop_reason", "failure")  # how the run's previous job ended
        self._conn.redis.hset(
            self._key, mapping={"config": json.dumps(config), "status": "starting", "updated_at": time.time()}
        )

    def update(self, **fields: Any) -> None:
        """Set run fields (status, step, policy_version, reward_version, ...)."""
        self._conn.redis.hset(
            self._key,
            mapping={k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in fields.items()}
            | {"updated_at": time.time()},
        )

    def info(self) -> dict[str, str]:
        """The registry hash as stored (its `status` is what the driver wrote; see `status()`)."""
        return self._conn.redis.hgetall(self._key)

    def status(self, lease: Lease, commands: Commands) -> dict[str, Any]:
        """What `flexgrpo status` shows: the registry (without the config) with `status` "lost" when it claims a
        live job but no lease is live, the lease, the workers' heartbeats and the last rejected commands."""
        info: dict[str, Any] = {k: v for k, v in self.info().items() if k not in ("config", "lease_owner")}
        for key in JSON_FIELDS:  # stored as JSON by `update`: shown as the objects they are
            if key in info:
                info[key] = json.loads(info[key])
        live = lease.current()
        renewed = info.pop("lease_renewed_at", None)
        if info.get("status") in LIVE_STATUSES and live is None:
            info["status"] = "lost"
            info["last_beat"] = ago(float(renewed)) if renewed else "never (no lease was ever taken)"
        return info | {
            "run": self.run,
            "lease": live,
            "heartbeats": read_heartbeats(self._conn),
            "rejected_commands": commands.rejected(),
        }


def write_status_file(run_dir: str | Path, status: dict[str, Any]) -> None:
    """Write RUN_DIR/status.json atomically (the driver, every step and at exit: `control.status()`, or the
    last one it had when Redis is gone) so that `flexgrpo status` works after the job's Redis is gone."""
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(status | {"written_at": time.time()}, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


def read_status_file(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/status.json as a dict; None when it is missing or unreadable."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

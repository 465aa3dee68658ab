"""The run's metrics stream R:metrics (see keys.py): one entry per learner step, JSON in field "m", capped at
100,000 entries; a resume forgets the steps it redoes."""

from __future__ import annotations

import json

from flexgrpo.control_plane import keys
from flexgrpo.control_plane.connection import Connection


class MetricsStream:
    """The metrics stream of one run."""

    def __init__(self, connection: Connection) -> None:
        self._conn, self._key = connection, keys.metrics(connection.run)

    def publish(self, step: int, metrics: dict[str, float]) -> None:
        self._conn.redis.xadd(self._key, {"m": json.dumps({"step": step} | metrics)}, maxlen=100_000)

    def read(self) -> list[dict]:
        return [json.loads(fields["m"]) for _, fields in self._conn.redis.xrange(self._key)]

    def forget_from(self, step: int) -> int:
        """Delete the metrics of steps >= `step` (a resume redoes them); returns how many entries went."""
        doomed = [
            entry_id
            for entry_id, fields in self._conn.redis.xrange(self._key)
            if json.loads(fields["m"])["step"] >= step
        ]
        return self._conn.redis.xdel(self._key, *doomed) if doomed else 0

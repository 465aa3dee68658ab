"""The pipeline's figures between two step reports: per pool, groups done per second and the share of its live
workers' time with no call outstanding (`<pool>/groups_per_s`, `<pool>/idle_frac`, with `workers_live` and
`workers_wanted`); groups dropped, by reason (`rollout/dropped_<reason>`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from orchestration.roles import Roles

POOLS = ("rollout", "reward")


@dataclass
class PoolMeter:
    """One pool's groups done and idle worker-seconds since the last report."""

    done: int = 0
    idle_worker_seconds: float = 0.0
    since: float = field(default_factory=time.monotonic)

    def take(self, workers: int) -> tuple[float, float]:
        """-> (groups/s, idle fraction of `workers` live workers) since the last take; starts a new window."""
        elapsed = max(1e-9, time.monotonic() - self.since)
        out = (self.done / elapsed, min(1.0, self.idle_worker_seconds / (elapsed * max(1, workers))))
        self.done, self.idle_worker_seconds, self.since = 0, 0.0, time.monotonic()
        return out


class PipelineMeters:
    def __init__(self) -> None:
        self.pools = {pool: PoolMeter() for pool in POOLS}
        self.dropped: dict[str, int] = {}  # reason -> groups dropped since the last report
        self._last_tick = time.monotonic()

    def tick(self, idle_workers: dict[str, int]) -> None:
        """Count idle worker-time since the last tick. idle_workers: per pool, the live workers with no call
        outstanding now (they were idle since the last event)."""
        now = time.monotonic()
        dt, self._last_tick = now - self._last_tick, now
        for pool, meter in self.pools.items():
            meter.idle_worker_seconds += dt * idle_workers[pool]

    def report(self, roles: Roles) -> dict[str, float]:
        """The figures since the last report; starts a new window."""
        metrics: dict[str, float] = {}
        for pool, meter in self.pools.items():
            workers = roles.pool(pool)
            metrics[f"{pool}/groups_per_s"], metrics[f"{pool}/idle_frac"] = meter.take(len(workers))
            metrics[f"{pool}/workers_live"] = float(len(workers))
            metrics[f"{pool}/workers_wanted"] = float(workers.wanted)
        for reason, count in self.dropped.items():
            metrics[f"rollout/dropped_{reason}"] = float(count)
        self.dropped = {}
        return metrics

"""The optional autoscaling policy (`cluster.autoscale`, off by default): after each learner step, from that
step's figures, grow the pool that holds the learner up and shrink one that idles, within each pool's
`min_workers`..`max_workers`. At most one change per step:

  grow     the learner waited for groups more than WAITED_SHARE of the step, the busier pool (the lower idle
           share) idled less than BUSY_IDLE, and every worker it wants is live (no earlier request still waits
           for resources); where the cluster has no room, the new worker waits like one asked for by command
  shrink   a pool idled more than IDLE_SHARE of the time for PATIENCE steps in a row

After a change, COOLDOWN steps pass before the next: a new worker needs time to load and show in the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flexgrpo.config import ClusterConfig

POOLS = ("rollout", "reward")
WAITED_SHARE = 0.3
BUSY_IDLE = 0.1
IDLE_SHARE = 0.5
PATIENCE = 5
COOLDOWN = 5


@dataclass
class Autoscaler:
    bounds: dict[str, tuple[int, int]]  # pool -> (min_workers, max_workers)
    idle_steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POOLS, 0))  # idle streaks
    cooldown: int = 0  # steps left before the next change

    @classmethod
    def from_config(cls, cfg: ClusterConfig) -> Autoscaler | None:
        """None when `cluster.autoscale` is off."""
        if not cfg.autoscale:
            return None
        bounds = {}
        for name in POOLS:
            pool = getattr(cfg, name)
            low = pool.num_workers if pool.min_workers is None else pool.min_workers
            bounds[name] = (low, pool.num_workers if pool.max_workers is None else pool.max_workers)
        return cls(bounds)

    def decide(self, metrics: dict[str, float]) -> dict[str, int]:
        """A step's metrics (timing/groups, timing/step, <pool>/idle_frac, <pool>/workers_live and _wanted) ->
        {pool: its new number of workers}, empty when nothing should change."""
        for pool in POOLS:
            self.idle_steps[pool] = self.idle_steps[pool] + 1 if metrics[f"{pool}/idle_frac"] > IDLE_SHARE else 0
        if self.cooldown > 0:
            self.cooldown -= 1
            return {}
        wanted = {p: int(metrics[f"{p}/workers_wanted"]) for p in POOLS}
        change: dict[str, int] = {}
        busiest = min(POOLS, key=lambda p: metrics[f"{p}/idle_frac"])
        waited = metrics["timing/groups"] / max(1e-9, metrics["timing/step"])
        if (
            waited > WAITED_SHARE
            and metrics[f"{busiest}/idle_frac"] < BUSY_IDLE
            and metrics[f"{busiest}/workers_live"] == wanted[busiest]
            and wanted[busiest] < self.bounds[busiest][1]
        ):
            change = {busiest: wanted[busiest] + 1}
        else:
            idle = [p for p in POOLS if self.idle_steps[p] >= PATIENCE and wanted[p] > self.bounds[p][0]]
            change = {idle[0]: wanted[idle[0]] - 1} if idle else {}
        if change:
            self.cooldown = COOLDOWN
            self.idle_steps = dict.fromkeys(POOLS, 0)
        return change

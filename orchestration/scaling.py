"""Growing and shrinking the rollout and reward pools of a running job: the `scale` operator command.

New workers get a placement group each; the outcome says whether the cluster placed them at once or they wait
for resources (they join by themselves when a node comes: `Recovery.poll_pools`). On a cluster with the Ray
autoscaler, the pools' whole demand is handed to it (`ray.autoscaler.sdk.request_resources`), so it starts the
nodes they need. Removed workers hand their unfinished groups back to the queue first.
"""

from __future__ import annotations

import logging

import ray

from orchestration.pipeline import GroupPipeline
from orchestration.recovery import Recovery
from orchestration.roles import Roles

log = logging.getLogger("flexgrpo")
PLACED_WITHIN_S = 5.0  # a new worker's bundle placed within this is "placed"; later, "pending"
SCALABLE = ("rollout", "reward")


class ScaleRefused(ValueError):
    """A scale command that cannot be carried out; the message says why."""


def scale_pool(roles: Roles, pipeline: GroupPipeline, recovery: Recovery, pool: str, workers: object) -> str:
    """Set `pool` to `workers` workers. -> the outcome in words (placed, pending on resources, removed)"""
    if pool not in SCALABLE:
        raise ScaleRefused(f"pool must be one of {list(SCALABLE)} (the learner's world size is fixed), got {pool!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ScaleRefused(f"workers must be an integer >= 1, got {workers!r}")
    group = roles.pool(pool)
    before = group.wanted
    if workers > before:
        new = group.grow(workers - before)
        request_cluster_resources(roles)
        ready = [group.placement_group(s).ready() for s in new]  # all at once: PLACED_WITHIN_S in all
        done, _ = ray.wait(ready, num_returns=len(ready), timeout=PLACED_WITHIN_S)
        placed = [s for s, ref in zip(new, ready, strict=True) if ref in done]
        pending = [s for s in new if s not in placed]
        parts = [f"placed {', '.join(map(group.name_of, placed))}"] if placed else []
        if pending:
            parts.append(f"pending on resources {group.bundle}: {', '.join(map(group.name_of, pending))}")
        outcome = f"{pool} {before} -> {workers} workers: " + "; ".join(parts)
    elif workers < before:
        removed = group.choose_removal(before - workers)
        pipeline.release(pool, removed)
        was_live = any(s in group.live for s in removed)
        group.remove(removed)
        if pool == "rollout" and was_live:
            recovery.rollout_changed()
        outcome = f"{pool} {before} -> {workers} workers: removed {', '.join(map(group.name_of, removed))}"
    else:
        outcome = f"{pool} already has {workers} workers"
    log.info("scale: %s", outcome)
    return outcome


def request_cluster_resources(roles: Roles) -> None:
    """Tell the Ray autoscaler (where there is one) what every pool wants, so that it adds the nodes needed."""
    from ray.autoscaler.sdk import request_resources

    bundles = [dict(p.bundle) for p in (roles.rollout, roles.reward) for _ in range(p.wanted)]
    bundles += [dict(roles.learner.bundle) for _ in range(roles.learner.size)]
    request_resources(bundles=bundles)

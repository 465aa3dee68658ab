"""One learner step over the learner's ranks: each trains on its contiguous share of the step's groups, its
trajectories going from the object store straight to it; the step's advantages come from all the scores."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import ray

from flexgrpo.records import TrainedStep
from orchestration.pipeline import GroupInFlight


def train_on_ranks(
    learners: list, batch: list[GroupInFlight], version: int, wait: Callable[[list[ray.ObjectRef]], None]
) -> TrainedStep:
    """`wait(refs)` returns once the ranks' results are ready (the pools are fed meanwhile). -> the step's version
    and metrics (averaged over ranks; maxima stay maxima), or the groups whose trajectories were lost (then no
    rank trained, and the version stays `version`)."""
    scores = [replace(g.scored, details=[]) for g in batch]  # the judges' texts stay in the driver
    size = math.ceil(len(batch) / len(learners))
    refs = [
        actor.train_step_from_store.remote(
            scores, [(g.group.group_id, g.trajectory) for g in batch[r * size : (r + 1) * size]]
        )
        for r, actor in enumerate(learners)
    ]
    wait(refs)
    results: list[TrainedStep] = ray.get(refs)
    if lost := tuple(group_id for r in results for group_id in r.lost):
        return TrainedStep(version=version, metrics={}, lost=lost)
    versions = {r.version for r in results}
    if len(versions) != 1:
        raise RuntimeError(f"learner ranks disagree on the policy version after a step: {sorted(versions)}")
    metrics = {k: (max if k.endswith("_max") else _mean)([r.metrics[k] for r in results]) for k in results[0].metrics}
    return TrainedStep(version=versions.pop(), metrics=metrics)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)

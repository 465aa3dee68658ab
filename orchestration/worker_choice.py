"""Which live worker of a pool gets the next group of the pipeline (orchestration/pipeline.py)."""

from __future__ import annotations


class WorkerChoice:
    """The worker with the fewest calls outstanding; ties go to the one given a group longest ago (a new one
    first), so work spreads over equally loaded workers."""

    def __init__(self) -> None:
        self._given: dict[str, dict[int, int]] = {"rollout": {}, "reward": {}}  # slot -> when it last got a group
        self._handed = 0

    def pick(self, pool: str, load: dict[int, int], limit: int | None = None) -> int | None:
        """The worker to give the next group, from `load` (calls outstanding per live slot); None: no live
        worker, or every one at `limit`."""
        if not load:
            return None
        given = self._given[pool]
        worker = min(load, key=lambda w: (load[w], given.get(w, -1), w))
        return None if limit is not None and load[worker] >= limit else worker

    def given(self, pool: str, worker: int) -> None:
        """`worker` of `pool` was given a group."""
        self._handed += 1
        self._given[pool][worker] = self._handed

"""An elastic pool of role actors (the rollout or the reward workers): one single-bundle placement group per
worker, so that a pool can grow, shrink, lose a node and win it back while the job runs.

A worker is a slot, numbered for the life of the job (`rollout-3` is never reused). A slot is

  starting   its bundle waits for room in the cluster, or its actor is being built (or rebuilt on another node
             after its own died: Ray re-places the bundle of a lost node when capacity exists, and restarts the
             actor there, since pool actors have max_restarts=-1)
  live       its actor answered since it last failed; the pipeline hands it work (an actor found restarted
             since then, its process new, is starting again: it joins like a new worker). Live workers are asked
             which process they are every few seconds (`suspects`): Ray may restart one that had no call
             outstanding, and then no call fails to say so

The pool never blocks on a starting slot: `poll` reports the slots that came up since the last poll, and the
job works with the live ones meanwhile (degraded, not stuck).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group

from cluster.ray_cluster import PoolUnplaced, actor_options, remote_class, worker_bundle
from flexgrpo.config import PoolConfig

PROBE_EVERY_S = 1.0  # a starting slot whose actor refused to answer (it is restarting) is asked again after this
BUSY_IS_ALIVE_S = 2.0  # `check`: an actor that neither answers nor fails within this is busy, hence alive
LIVE_CHECK_EVERY_S = 5.0  # `suspects`: how often a live worker is asked which process it is


@dataclass
class Slot:
    actor: Any
    placement_group: PlacementGroup
    live: bool = False
    probe: ray.ObjectRef | None = None  # an outstanding `incarnation` call: while starting, or to check a live one
    incarnation: str | None = None  # the actor's process when it last came up (a restart changes it)
    probed_at: float = -float("inf")


class WorkerPool:
    def __init__(
        self,
        pool: PoolConfig,
        *,
        name: str,
        cls: type,
        args: tuple = (),
        kwargs_for: Callable[[int], dict[str, Any]] = lambda slot: {},
        max_concurrency: int = 1,
        concurrency_groups: dict[str, int] | None = None,
    ) -> None:
        """Starts `pool.num_workers` workers of `cls` (without waiting: see `wait_live`). kwargs_for(slot): the
        constructor's keyword arguments of one worker."""
        self.name, self.bundle = name, worker_bundle(pool)
        self.args, self.kwargs_for = args, kwargs_for
        self.max_concurrency = max_concurrency
        self._remote_cls = remote_class(cls, concurrency_groups)
        self.slots: dict[int, Slot] = {}
        self._next_slot = 0
        self.grow(pool.num_workers)

    # ---- membership -------------------------------------------------------------------------------------

    def grow(self, n: int) -> list[int]:
        """Add `n` workers: each gets a placement group of its own and an actor on it, both placed by Ray when
        the cluster has room. -> the new slots (starting)"""
        new = []
        for _ in range(n):
            slot, self._next_slot = self._next_slot, self._next_slot + 1
            group = placement_group([dict(self.bundle)], name=f"{self.name}-{slot}")
            options = actor_options(self.name_of(slot), self.bundle, group, 0, -1, self.max_concurrency)
            actor = self._remote_cls.options(**options).remote(*self.args, **self.kwargs_for(slot))
            self.slots[slot] = Slot(actor, group)
            new.append(slot)
        return new

    def choose_removal(self, n: int) -> list[int]:
        """The `n` workers to remove first: starting ones, then the newest."""
        return sorted(self.slots, key=lambda s: (self.slots[s].live, -s))[:n]

    def remove(self, slots: list[int]) -> None:
        """End these workers and free their resources (the caller took their groups back first)."""
        for slot in slots:
            entry = self.slots.pop(slot)
            ray.kill(entry.actor)
            remove_placement_group(entry.placement_group)

    def shutdown(self) -> None:
        self.remove(list(self.slots))

    # ---- who is live ------------------------------------------------------------------------------------

    @property
    def live(self) -> list[int]:
        return sorted(s for s, entry in self.slots.items() if entry.live)

    @property
    def actors(self) -> list:
        """The live workers' actors, by slot."""
        return [self.slots[s].actor for s in self.live]

    @property
    def actor_names(self) -> list[str]:
        return [self.name_of(s) for s in self.live]

    def __len__(self) -> int:
        return len(self.live)

    @property
    def wanted(self) -> int:
        """Workers the pool should have (live and starting)."""
        return len(self.slots)

    def actor(self, slot: int) -> Any:
        return self.slots[slot].actor

    def placement_group(self, slot: int) -> PlacementGroup:
        return self.slots[slot].placement_group

    def name_of(self, slot: int) -> str:
        return f"{self.name}-{slot}"

    def lost(self, slot: int) -> None:
        """The worker's actor failed: it is starting again until it answers (Ray restarts it where its bundle
        is, or once the bundle is re-placed)."""
        if slot in self.slots:
            self.slots[slot].live, self.slots[slot].probe = False, None

    def check(self, slot: int) -> bool:
        """Is the worker alive now? (a dead or restarting actor fails fast; a busy one is alive). Marks it lost
        when not."""
        entry = self.slots[slot]
        try:
            incarnation = ray.get(entry.actor.incarnation.remote(), timeout=BUSY_IS_ALIVE_S)
        except ray.exceptions.GetTimeoutError:
            return True
        except ray.exceptions.RayActorError:
            self.lost(slot)
            return False
        if incarnation != entry.incarnation:  # Ray restarted it already: it must join again like a lost one
            self.lost(slot)
            return False
        return True

    def _answered(self, live: bool, every_s: float) -> list[int]:
        """Ask the live (or the starting) workers which process they are, each at most every `every_s` and never
        twice at once, without waiting. -> the slots among them whose answer (or failure) came"""
        now = time.monotonic()
        asked = [slot for slot, entry in self.slots.items() if entry.live == live]
        for slot in asked:
            entry = self.slots[slot]
            if entry.probe is None and now - entry.probed_at >= every_s:
                entry.probe, entry.probed_at = entry.actor.incarnation.remote(), now
        probes = [self.slots[slot].probe for slot in asked if self.slots[slot].probe is not None]
        done = set(ray.wait(probes, num_returns=len(probes), timeout=0)[0]) if probes else set()
        return [slot for slot in asked if self.slots[slot].probe in done]

    def suspects(self) -> list[int]:
        """The live workers found dead or restarted since they came up (by their answer to a check made every
        LIVE_CHECK_EVERY_S; a busy worker answers later and is asked nothing more meanwhile): for `check`."""
        found = []
        for slot in self._answered(live=True, every_s=LIVE_CHECK_EVERY_S):
            entry = self.slots[slot]
            probe, entry.probe = entry.probe, None
            try:
                if ray.get(probe) != entry.incarnation:
                    found.append(slot)
            except ray.exceptions.RayActorError:
                found.append(slot)
        return found

    def poll(self) -> list[int]:
        """Ask the starting workers whether they are up. -> the slots that became live since the last poll"""
        became_live = []
        for slot in self._answered(live=False, every_s=PROBE_EVERY_S):
            entry = self.slots[slot]
            try:
                entry.incarnation = ray.get(entry.probe)
                entry.live = True
                became_live.append(slot)
            except ray.exceptions.RayActorError as err:  # restarting: ask again after PROBE_EVERY_S
                if err.actor_init_failed:  # its constructor raised (a model that cannot load): it never will start
                    raise
            entry.probe = None
        return became_live

    def wait_live(self, timeout_s: float) -> None:
        """Block until every worker is live (the job's start); raises PoolUnplaced naming what still waits."""
        deadline = time.monotonic() + timeout_s
        while len(self.live) < len(self.slots):
            self.poll()
            if time.monotonic() > deadline:
                raise PoolUnplaced(f"the {self.name} pool is not up after {timeout_s:g} s: {', '.join(self.waiting())}")
            time.sleep(0.2)

    def waiting(self) -> list[str]:
        """What each starting worker waits for, in words (for `flexgrpo status`)."""
        out = []
        for slot, entry in sorted(self.slots.items()):
            if entry.live:
                continue
            state = placement_group_table(entry.placement_group).get("state", "")
            placed = state == "CREATED"
            out.append(f"{self.name_of(slot)}: " + ("actor starting" if placed else f"resources {self.bundle}"))
        return out

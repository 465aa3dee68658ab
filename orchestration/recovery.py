"""Recovery of dead actors and lost nodes, within a restart budget per time window (not per job).

A dead rollout or reward worker (its process, or its whole node) leaves its pool until Ray has restarted it
where its bundle is re-placed; meanwhile its groups are admitted again (same ids and seeds) on the live workers,
and the weight-sync group is rebuilt without it. When it comes back up it gets the reward spec, its heartbeat,
the weight-sync group and the current weights before its first group. With no room for it in the cluster, the
pool stays smaller until a node joins (degraded, not stuck).

A dead learner rank takes every rank down with it (DeepSpeed's collectives): the learner pool is replaced (once
the cluster has room, within cluster.learner_wait_s; else the job stops), every rank reloads the latest
checkpoint, and the ledger is rolled back to it, so the steps since are trained again from the same groups and
none twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import ray

from cluster.ray_cluster import LOST, PoolUnplaced
from flexgrpo.config import Config
from flexgrpo.control_plane import ControlPlane
from orchestration.checkpoints import latest_checkpoint
from orchestration.operator import Operator
from orchestration.roles import Roles, connect_weight_sync, spawn_learner, start_heartbeats
from orchestration.weights import WeightBroadcast

log = logging.getLogger("flexgrpo")
LEARNER_ALIVE_S = 60.0


class RestartBudgetExceeded(RuntimeError):
    """More actor restarts within the window than cluster.max_restarts allows."""


class LearnerUnavailable(RuntimeError):
    """A learner pool could not be rebuilt: the cluster had no room for its ranks within cluster.learner_wait_s."""


class RecoveredRun(Protocol):
    """What a recovery needs of the run it brings back (the trainer), beside its roles."""

    weights: WeightBroadcast  # forgets the lost receivers, then resends the current weights
    operator: Operator  # restores the reward spec on restarted reward actors

    def restore(self, folder: Path | None) -> None:
        """Continue from the checkpoint in `folder` (None: from the start)."""
        ...


class Recovery:
    def __init__(self, cfg: Config, roles: Roles, control: ControlPlane, run_dir: Path, run: RecoveredRun) -> None:
        """roles: the run's roles, whose learner group a learner recovery replaces in place."""
        self.cfg, self.roles, self.control, self.run_dir, self.run = cfg, roles, control, run_dir, run
        self.count = 0  # recoveries so far in this job
        self._recent: deque[float] = deque()  # times of the recoveries inside the budget window

    def spend(self, what: str) -> None:
        cfg = self.cfg.cluster
        now = time.monotonic()
        while self._recent and now - self._recent[0] > cfg.restart_window_s:
            self._recent.popleft()
        if len(self._recent) >= cfg.max_restarts:
            raise RestartBudgetExceeded(
                f"{what}: {len(self._recent)} restarts within {cfg.restart_window_s:.0f} s already "
                f"(cluster.max_restarts = {cfg.max_restarts}); giving up"
            )
        self._recent.append(now)
        self.count += 1
        self.control.update_run(recoveries=self.count)

    def run_step(self, step: Callable[[], None]) -> None:
        """Run one learner step; if a learner rank dies on the way, replace the learner and resume from the latest
        checkpoint (the step is then taken again from the restored position). The death may surface as another
        role's task error: a rollout worker's receive fails first when the broadcasting rank is gone."""
        try:
            step()
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            if not self.learner_died():
                raise
            log.warning("a learner rank died (%s): restarting the learner from the latest checkpoint", err)
            self.replace_learner()

    def learner_died(self) -> bool:
        """Is a learner rank dead? Asked of every rank at once: a dead one answers at once, while a live rank may
        be stuck in a collective with it (a busy rank is given LEARNER_ALIVE_S to answer, then counts as alive)."""
        pending = [actor.ready.remote() for actor in self.roles.learner.actors]
        deadline = time.monotonic() + LEARNER_ALIVE_S
        while pending and (left := deadline - time.monotonic()) > 0:
            answered, pending = ray.wait(pending, num_returns=1, timeout=left)
            for answer in answered:
                try:
                    ray.get(answer)
                except ray.exceptions.RayActorError:
                    return True
        return False

    def broadcast_failed(self, err: Exception) -> None:
        """A weight broadcast failed: a dead learner rank is the learner's recovery (raised to `run_step`); else
        a rollout worker died (maybe while idle, with no group in flight to notice it). The group is broken
        either way: it is built again (without the dead) and the weights sent again."""
        if self.learner_died():
            raise err
        if not self.workers_lost({"rollout": set(self.roles.rollout.live)}):
            self.rollout_changed()

    def workers_lost(self, suspects: dict[str, set[int]]) -> bool:
        """A call on these workers failed (their groups are already queued again): the ones that are dead are
        taken out of their pool until Ray has restarted them (`poll_pools` takes them back). The job goes on
        with the live ones: the weight-sync group is rebuilt without the lost rollout workers. A worker already
        taken out (one death, noticed twice) costs nothing more. -> whether the group was rebuilt"""
        pools = {name: self.roles.pool(name) for name in suspects}  # (a worker removed by a scale-down is no suspect)
        lost = {
            name: [s for s in sorted(slots) if s in pools[name].live and not pools[name].check(s)]
            for name, slots in suspects.items()
        }
        if not any(lost.values()):
            return False
        self.spend("rollout/reward worker lost")
        for name, slots in lost.items():
            for slot in slots:
                pool = pools[name]
                log.warning(
                    "%s lost: its groups go back to the queue (%d/%d live)", pool.name_of(slot), len(pool), pool.wanted
                )
        self.control.update_run(waiting=self.roles.waiting())
        if lost.get("rollout"):
            self.rollout_changed()
            return True
        return False

    def poll_pools(self) -> None:
        """Workers that came up (restarted where their bundle was re-placed, or added by a scale command) get
        the run's reward spec, the weight-sync group and the current weights, then their heartbeat (the sign,
        for `flexgrpo status`, that they work). Live workers found dead or restarted with no call failing (Ray
        restarts an idle one) leave their pool first, to join again the same way."""
        suspects = {name: set(self.roles.pool(name).suspects()) for name in ("rollout", "reward")}
        if any(suspects.values()):
            self.workers_lost(suspects)
        joined = {name: self.roles.pool(name).poll() for name in ("rollout", "reward")}
        if not any(joined.values()):
            return
        for name, slots in joined.items():
            pool = self.roles.pool(name)
            for slot in slots:
                log.info("%s is up (%d/%d live)", pool.name_of(slot), len(pool), pool.wanted)
        try:
            if joined["reward"] and self.run.operator.specs.latest:  # built with the first spec; a swap came since
                self.run.operator.restore_workers([self.roles.reward.actor(s) for s in joined["reward"]])
            if joined["rollout"]:
                self.rollout_changed()  # (one lost while it joins is out of the pool again)
            pools = {name: self.roles.pool(name) for name in joined}
            members = [  # (actor, name) of every worker that came up and is still live
                (pools[name].actor(slot), pools[name].name_of(slot))
                for name, slots in joined.items()
                for slot in slots
                if slot in pools[name].live
            ]
            start_heartbeats(members, self.control)
        except LOST as err:  # one died again before it had joined: they all join again once they answer
            log.warning("a worker died while it joined (%s): joining again once up", type(err).__name__)
            self.spend("worker lost while it joined")  # a worker that dies at every join must run out of budget
            for name, slots in joined.items():
                for slot in slots:
                    self.roles.pool(name).lost(slot)
            if joined["rollout"]:
                self.rollout_changed()  # the weight-sync group without them
            return
        self.control.update_run(waiting=self.roles.waiting())

    def replace_learner(self) -> None:
        """A learner rank died (its node may be gone): a new learner pool, once the cluster has room for it
        (`cluster.learner_wait_s`), reloads the latest checkpoint."""
        self.spend("learner rank died")
        self.roles.learner.shutdown()
        wait = self.cfg.cluster.learner_wait_s
        self.control.update_run(waiting=f"learner pool: room for its ranks (up to {wait:g} s)")
        try:
            self.roles.learner = spawn_learner(self.cfg)
        except PoolUnplaced as err:
            raise LearnerUnavailable(str(err)) from None
        self.control.update_run(waiting="")
        self._reconnect(heartbeats=self.roles.learner.actors)
        self.run.restore(latest_checkpoint(self.run_dir))

    def rollout_changed(self) -> None:
        """The live rollout workers changed: a new weight-sync group, and the current weights sent to all."""
        self._reconnect()
        self.run.weights.publish()

    def _reconnect(self, heartbeats: list | None = None) -> None:
        """After the rollout pool or the learner changed: a new weight-sync group of the learner and the live
        rollout workers (the old receives no longer matter); `heartbeats`: new learner ranks that must beat."""
        self.run.weights.forget()
        if connect_weight_sync(self.roles, self.cfg.cluster.weight_sync_join_s):
            self.spend("rollout worker lost in the weight-sync rendezvous")
        if heartbeats:
            start_heartbeats(list(zip(heartbeats, self.roles.learner.actor_names, strict=True)), self.control)

"""Recovery of dead actors, within a restart budget per time window (not per job).

A dead rollout or reward actor is restarted by Ray; its groups are admitted again (same ids and seeds), the
weight-sync group is rebuilt and the current weights resent. A dead learner rank takes every rank down with it
(DeepSpeed's collectives): the learner pool is replaced, every rank reloads the latest checkpoint, and the ledger
is rolled back to it, so the steps since are trained again from the same groups and none twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import ray

from flexgrpo.config import Config
from flexgrpo.control_plane import ControlPlane
from orchestration.checkpoints import latest_checkpoint
from orchestration.operator import Operator
from orchestration.roles import Roles, connect_weight_sync, spawn_learner, start_heartbeats, wait_until_ready
from orchestration.weights import WeightBroadcast

log = logging.getLogger("flexgrpo")
READY_TIMEOUT_S = 900


class RestartBudgetExceeded(RuntimeError):
    """More actor restarts within the window than cluster.max_restarts allows."""


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
        checkpoint (the step is then taken again from the restored position)."""
        try:
            step()
        except ray.exceptions.RayActorError as err:
            if not self._learner_died():
                raise
            log.warning("a learner rank died (%s): restarting the learner from the latest checkpoint", err)
            self.replace_learner()

    def _learner_died(self) -> bool:
        for actor in self.roles.learner.actors:
            try:
                ray.get(actor.ready.remote(), timeout=60)
            except ray.exceptions.RayActorError:
                return True
        return False

    def broadcast_failed(self, err: Exception) -> None:
        """A weight broadcast failed: a dead learner rank is the learner's recovery (raised to `run_step`); else
        a rollout worker died (maybe while idle, with no group in flight to notice it)."""
        if self._learner_died():
            raise err
        self.replace_workers()

    def replace_workers(self) -> None:
        """After Ray restarted a dead rollout or reward actor: wait for the pools, restore the reward spec, rebuild
        the weight-sync group (it lost a member) and resend the current weights."""
        self.spend("rollout/reward actor died")
        roles, run = self.roles, self.run
        log.warning("a rollout or reward actor died: its groups go back to the queue")
        wait_until_ready(roles.rollout.actors + roles.reward.actors, timeout_s=READY_TIMEOUT_S)
        run.operator.restore_workers(roles.reward.actors)
        self._reconnect()
        run.weights.publish()

    def replace_learner(self) -> None:
        self.spend("learner rank died")
        self.roles.learner.shutdown()
        self.roles.learner = spawn_learner(self.cfg)
        wait_until_ready(self.roles.learner.actors, timeout_s=READY_TIMEOUT_S)
        self._reconnect()
        self.run.restore(latest_checkpoint(self.run_dir))

    def _reconnect(self) -> None:
        """After a role was replaced: a new weight-sync group (the old receives no longer matter), heartbeats."""
        self.run.weights.forget()
        connect_weight_sync(self.roles)
        start_heartbeats(self.roles, self.control)

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
from typing import TYPE_CHECKING

import ray

from orchestration.checkpoints import latest_checkpoint
from orchestration.roles import connect_weight_sync, spawn_learner, start_heartbeats, wait_until_ready

if TYPE_CHECKING:
    from orchestration.trainer import Trainer

log = logging.getLogger("flexgrpo")
READY_TIMEOUT_S = 900


class RestartBudgetExceeded(RuntimeError):
    """More actor restarts within the window than cluster.max_restarts allows."""


class Recovery:
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.count = 0  # recoveries so far in this job
        self._recent: deque[float] = deque()  # times of the recoveries inside the budget window

    def spend(self, what: str) -> None:
        cfg = self.trainer.cfg.cluster
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
        self.trainer.control.update_run(recoveries=self.count)

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
        for actor in self.trainer.roles.learner.actors:
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
        t = self.trainer
        log.warning("a rollout or reward actor died: its groups go back to the queue")
        wait_until_ready(t.roles.rollout.actors + t.roles.reward.actors, timeout_s=READY_TIMEOUT_S)
        t.operator.restore_workers(t.roles.reward.actors)
        t.weights.forget()
        connect_weight_sync(t.roles)
        start_heartbeats(t.roles, t.control)
        t.weights.publish()

    def replace_learner(self) -> None:
        self.spend("learner rank died")
        t = self.trainer
        t.roles.learner.shutdown()
        t.roles.learner = spawn_learner(t.cfg)
        wait_until_ready(t.roles.learner.actors, timeout_s=READY_TIMEOUT_S)
        t.weights.forget()
        connect_weight_sync(t.roles)
        start_heartbeats(t.roles, t.control)
        t.restore(latest_checkpoint(t.run_dir))

"""A running job's checkpoints, driven from the trainer: writing one (every learner rank's state, the LoRA, the run
state with the prompt-stream position) and folding the ledger behind it; going back to one (the learner ranks
load it, the ledger and the metrics are rolled back to its step). Where the files go: orchestration/checkpoints.py.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import ray

from flexgrpo.config import Config
from flexgrpo.control_plane import ControlPlane
from orchestration.checkpoints import RunState, checkpoint_step, read_run_state, write_checkpoint
from orchestration.learner_files import save_learner_state
from orchestration.reporting import MetricsLogger
from orchestration.roles import Roles

log = logging.getLogger("flexgrpo")


class RunCheckpoints:
    def __init__(self, cfg: Config, roles: Roles, control: ControlPlane, logger: MetricsLogger, run_dir: Path):
        self.cfg, self.roles, self.control, self.logger, self.run_dir = cfg, roles, control, logger, run_dir

    def write(self, state: RunState) -> Path:
        """A complete checkpoint of `state.step` (the ledger position is the step: a resume rolls the ledger back
        to it), then the reward curve, then the ledger folded behind the oldest checkpoint kept."""
        folder, kept = write_checkpoint(
            self.run_dir,
            state,
            partial(save_learner_state, self.roles, self.cfg),
            keep=self.cfg.run.keep_checkpoints,
        )
        self.logger.plot_rewards()
        self._settle_ledger(state.step, oldest=checkpoint_step(kept[0]))
        return folder

    def _settle_ledger(self, step: int, oldest: int) -> None:
        """Fold away the ledger records of groups trained `run.ledger_keep_steps` steps before `step` and before
        the oldest kept checkpoint, of step `oldest` (no resume goes back before it)."""
        before = min(oldest, step - self.cfg.run.ledger_keep_steps)
        if before > 0 and (settled := self.control.ledger_settle(before)):
            log.info(
                "ledger: %d groups trained before step %d settled (counted, their records folded)", settled, before
            )

    def roll_back(self, folder: Path | None, start: RunState) -> tuple[RunState, list[int]]:
        """Back to the checkpoint in `folder` (None: to `start`, the run's beginning): the learner ranks load its
        state, the ledger is rolled back to its step, and the metrics logged after it are forgotten.
        -> (its run state, the prompt-stream indexes of the groups the rollback queued again)"""
        state = read_run_state(folder) if folder is not None else start
        if folder is not None:
            versions = ray.get([a.load_checkpoint.remote(str(folder / "learner")) for a in self.roles.learner.actors])
            if set(versions) != {state.policy_version}:
                raise RuntimeError(f"learner ranks restored versions {versions}, expected {state.policy_version}")
        requeued = [int(group_id.removeprefix("g")) for group_id in self.control.ledger_rollback(state.step)]
        self.logger.forget_from(state.step)
        self.control.forget_metrics_from(state.step)
        return state, requeued

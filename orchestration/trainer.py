"""The learner's step loop over the streaming pipeline. A step is a few named, timed phases:

  groups   take `groups_per_step` scored groups fresh enough for the learner's version (the pools keep going)
  train    every learner rank trains on its share; advantages come from the whole step's scores
  commit   the step's groups are marked trained in the ledger, together with the step number
  publish  rank 0 starts broadcasting the new version; workers switch to it between groups (never waited for)

Around it, each in a module of its own: the ranks' share of a step (learner_step.py), operator commands
(operator.py), checkpoints and going back to one (run_checkpoints.py), evaluation (eval_schedule.py), where the
step's figures go (step_report.py), and the recovery of dead actors (recovery.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm import tqdm

from flexgrpo.config import Config
from flexgrpo.control_plane import ControlPlane
from flexgrpo.prompts import load_prompts
from flexgrpo.records import TrainedStep
from orchestration.autoscaling import Autoscaler
from orchestration.checkpoints import RunState
from orchestration.eval_schedule import EvalSchedule
from orchestration.learner_step import train_on_ranks
from orchestration.operator import Operator, RewardSpecs
from orchestration.pipeline import GroupInFlight, GroupPipeline, start_timeline
from orchestration.recovery import LearnerUnavailable, Recovery
from orchestration.reporting import MetricsLogger
from orchestration.roles import Roles
from orchestration.run_checkpoints import RunCheckpoints
from orchestration.scaling import scale_pool
from orchestration.step_report import StepReport
from orchestration.weights import WeightBroadcast

log = logging.getLogger("flexgrpo")


class Trainer:
    def __init__(self, cfg: Config, roles: Roles, control: ControlPlane, logger: MetricsLogger, run_dir: Path):
        self.cfg, self.roles, self.control, self.logger, self.run_dir = cfg, roles, control, logger, run_dir
        self.prompts = load_prompts(cfg.prompts)  # the run's prompt stream (every pipeline draws from it)
        self.step = 0  # the next learner step
        self.version = 0  # the learner's policy version (the learner owns it; this mirrors its last answer)
        self.learner_busy = False  # a learner step is in flight
        self.timeline = 0  # restores so far: the sample calls made before the last one are void on the workers
        self.recovery = Recovery(cfg, roles, control, run_dir, run=self)
        self.weights = WeightBroadcast(roles, on_failure=self.recovery.broadcast_failed)
        self.evals = EvalSchedule(cfg, roles, self.weights, logger, run_dir, self.recovery.workers_lost)
        self.checkpoints = RunCheckpoints(cfg, roles, control, logger, run_dir)
        self.pipeline = self._new_pipeline(next_index=0, requeued=[])  # replaced by `restore`
        self.operator = Operator(
            cfg,
            control,
            lambda: self.roles.reward.actors,
            self.checkpoint,
            RewardSpecs({0: list(cfg.rewards)}),
            scale=self.scale,
        )
        self.autoscaler = Autoscaler.from_config(cfg.cluster)  # None: pools change by command only
        self.report = StepReport(cfg, roles, control, logger, run_dir)
        self.checkpointed_step = -1  # next step of the newest checkpoint written by this trainer
        self.learner_lost: str | None = None  # why the job stopped without a learner (then nothing more is saved)

    def _new_pipeline(self, *, next_index: int, requeued: list[int]) -> GroupPipeline:
        return GroupPipeline(
            self.roles,
            self.cfg.grpo,
            self.prompts,
            seed=self.cfg.run.seed,
            control=self.control,
            steps_left=self.cfg.run.num_steps - self.step,
            next_index=next_index,
            requeued=requeued,
            timeline=self.timeline,
            on_workers_lost=self.recovery.workers_lost,
            on_tick=self._watch_workers,
        )

    def _watch_workers(self) -> None:
        """While the pipeline waits: workers that came up join; and while it waits for groups, a weight receive
        that failed is recovered from now, not at the next publish, which may never come (a worker waits for
        that version, and a dead worker that was idle fails no call). During a learner step that waits for the
        publish after it: the recovery asks the learner whether it lives, which a busy learner answers late."""
        if not self.learner_busy:
            self.weights.poll()
        self.recovery.poll_pools()

    # ---- the loop ---------------------------------------------------------------------------------------

    def run(self) -> str:
        """Train until `run.num_steps` or a stop; -> the final status ("finished" or "stopped")."""
        cfg = self.cfg
        self.control.update_run(status="running")
        self.evals.start(self.step, self.version, self.operator.specs.training)
        with tqdm(total=cfg.run.num_steps, initial=self.step, desc="grpo", unit="step", dynamic_ncols=True) as bar:
            while self.step < cfg.run.num_steps:
                try:  # a learner rank lost anywhere in here (a command's checkpoint too) is recovered the same way
                    self.recovery.run_step(self.operator.poll)
                    if self.operator.stop_requested:
                        log.info("stop requested: ending before step %d", self.step)
                        break
                    self.recovery.run_step(self._step_and_checkpoint)
                except LearnerUnavailable as err:  # the learner's node is gone and nothing can take its place
                    log.error("stopping before step %d: %s; resume the run when the cluster has room", self.step, err)
                    self.learner_lost = str(err)
                    self.control.update_run(stop_reason=self.learner_lost)
                    return "stopped"
                bar.update(self.step - bar.n)  # (a learner restart goes back to its checkpoint's step)
        finished = self.step >= cfg.run.num_steps
        if finished:
            self.pipeline.finish()
        if self.checkpointed_step != self.step:
            self.checkpoint()
        return "finished" if finished else "stopped"

    def _step_and_checkpoint(self) -> None:
        """One learner step, then a checkpoint when one is due or was asked for."""
        self.train_one_step()
        every = self.cfg.run.checkpoint_every
        due = every and self.step % every == 0 and self.step < self.cfg.run.num_steps
        if due or self.operator.checkpoint_requested:
            self.checkpoint()

    def train_one_step(self) -> None:
        step_start, self.report.timings = time.perf_counter(), {}
        while True:
            with self.report.timed("groups"):
                batch = self.pipeline.take(self.cfg.grpo.groups_per_step, self.version)
            with self.report.timed("train"):
                trained = self.train(batch)
            if not trained.lost:
                break
            lost = [g for g in batch if g.group.group_id in trained.lost]  # died with a node: sampled again
            log.warning("%d groups of the step died with their node before training: queued again", len(lost))
            self.pipeline.give_back(lost)
            self.recovery.workers_lost({"rollout": {g.rollout_worker for g in lost}})
        scores = [g.scored for g in batch]
        with self.report.timed("commit"):
            self.pipeline.trained(batch, self.step)
        self.version = trained.version
        with self.report.timed("publish"):
            self.weights.publish()
        self.pipeline.admit(self.version)
        pools = self.pipeline.report()
        metrics = self.report.figures(scores, pools, self.recovery.count, self.version) | trained.metrics
        metrics |= self.evals.take_baseline()
        if self.evals.due(self.step + 1):
            with self.report.timed("eval"):
                metrics |= self.evals.evaluate(self.step, self.version, self.operator.specs.training)
        metrics |= self.report.timings | {"timing/step": time.perf_counter() - step_start}
        grid = self.report.wants_grid(self.step, self.operator.stop_requested)
        self.report.report(self.step, self.version, metrics, batch, grid=grid)
        self.step += 1
        for pool, workers in self.autoscaler.decide(metrics).items() if self.autoscaler else ():
            log.info("autoscale: %s", self.scale(pool, workers))

    def scale(self, pool: str, workers: object) -> str:
        """Set a pool's number of workers (the scale command, the autoscaler). -> the outcome in words"""
        return scale_pool(self.roles, self.pipeline, self.recovery, pool, workers)

    def train(self, batch: list[GroupInFlight]) -> TrainedStep:
        """Every learner rank trains on its share of `batch` (orchestration/learner_step.py) while the pools
        are kept fed."""
        start, self.learner_busy = time.monotonic(), True
        learners, wait = self.roles.learner.actors, lambda refs: self.pipeline.wait(refs, self.version)
        try:
            trained = train_on_ranks(learners, batch, self.version, wait)
        finally:
            self.learner_busy = False
        self.report.learner_busy_s += time.monotonic() - start
        return trained

    # ---- checkpoints ------------------------------------------------------------------------------------

    def checkpoint(self) -> Path:
        """Learner state (every rank), the LoRA, the run state with the prompt-stream position; then the reward
        curve and the ledger folded behind the oldest checkpoint kept (orchestration/run_checkpoints.py)."""
        with self.report.timed("checkpoint"):
            state = RunState(self.step, self.version, self.operator.specs.as_json(), self.pipeline.next_index)
            folder = self.checkpoints.write(state)
        self.checkpointed_step = self.step
        self.operator.checkpoint_written(str(folder))
        log.info("checkpoint %s (%.1fs)", folder, self.report.timings["timing/checkpoint"])
        return folder

    def restore(self, folder: Path | None) -> None:
        """Continue from a checkpoint (None: from the start): learner state, step, versions, the reward spec,
        the ledger and the metrics rolled back to the checkpoint's step; the actors get the weights."""
        start = RunState(0, 0, self.operator.specs.as_json(), 0)
        state, requeued = self.checkpoints.roll_back(folder, start)
        self.step, self.version = state.step, state.policy_version
        self.operator.restore(state.reward_specs)
        self.timeline += 1
        start_timeline(self.roles, self.timeline)
        next_index = max([state.next_index, *(i + 1 for i in requeued)])
        self.pipeline = self._new_pipeline(next_index=next_index, requeued=requeued)
        self.checkpointed_step = self.step if folder is not None else -1
        self.weights.publish()
        self.weights.wait_received()  # every worker holds the restored weights before a group is admitted
        log.info(
            "resumed from %s at step %d (policy v%d, reward v%d, %d groups queued again)",
            folder or "the start",
            self.step,
            self.version,
            self.operator.specs.latest,
            len(requeued),
        )

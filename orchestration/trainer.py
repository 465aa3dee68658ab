"""The learner's step loop over the streaming pipeline. A step is a few named, timed phases:

  groups   take `groups_per_step` scored groups fresh enough for the learner's version (the pools keep going)
  train    every learner rank trains on its share; advantages come from the whole step's scores
  commit   the step's groups are marked trained in the ledger, together with the step number
  publish  rank 0 starts broadcasting the new version; workers switch to it between groups (never waited for)

Around it: operator commands, checkpoints, evaluation, reporting, and the recovery of dead actors. The ranks'
share of a step is orchestration/learner_step.py; where the step's figures go, orchestration/step_report.py.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import ray
from tqdm import tqdm

from cluster.ray_cluster import LOST
from flexgrpo.config import Config
from flexgrpo.control_plane import ControlPlane
from flexgrpo.prompts import load_prompts
from flexgrpo.records import MediaGroup, TrainedStep
from orchestration.autoscaling import Autoscaler
from orchestration.checkpoints import (
    RunState,
    checkpoint_step,
    read_run_state,
    write_checkpoint,
)
from orchestration.evaluation import Evaluation
from orchestration.learner_files import save_learner_state
from orchestration.learner_step import train_on_ranks
from orchestration.operator import Operator, RewardSpecs
from orchestration.pipeline import GroupInFlight, GroupPipeline
from orchestration.recovery import LearnerUnavailable, Recovery
from orchestration.reporting import MetricsLogger
from orchestration.roles import Roles
from orchestration.scaling import scale_pool
from orchestration.step_report import StepReport
from orchestration.weights import WeightBroadcast

log = logging.getLogger("flexgrpo")


class Trainer:
    def __init__(self, cfg: Config, roles: Roles, control: ControlPlane, logger: MetricsLogger, run_dir: Path):
        self.cfg, self.roles, self.control, self.logger, self.run_dir = cfg, roles, control, logger, run_dir
        self.prompts = load_prompts(cfg.prompts)  # the run's prompt stream (every pipeline draws from it)
        self.evaluation = Evaluation(cfg, run_dir)  # held-out prompts, scored against the starting policy
        self.step = 0  # the next learner step
        self.version = 0  # the learner's policy version (the learner owns it; this mirrors its last answer)
        self.learner_busy = False  # a learner step is in flight
        self.timeline = 0  # restores so far: the sample calls made before the last one are void on the workers
        self.recovery = Recovery(cfg, roles, control, run_dir, run=self)
        self.weights = WeightBroadcast(roles, on_failure=self.recovery.broadcast_failed)
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
        self.timings: dict[str, float] = {}
        self.report = StepReport(cfg, roles, control, logger, run_dir)
        self.checkpointed_step = -1  # next step of the newest checkpoint written by this trainer
        self.baseline: dict[str, float] = {}  # the evaluation before training, logged with the first step
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

    @contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        yield
        self.timings[f"timing/{phase}"] = time.perf_counter() - start

    # ---- the loop ---------------------------------------------------------------------------------------

    def run(self) -> str:
        """Train until `run.num_steps` or a stop; -> the final status ("finished" or "stopped")."""
        cfg = self.cfg
        self.control.update_run(status="running")
        if cfg.eval.every > 0 or cfg.eval.before_training:
            start_samples = self.evaluation.prepare(self.roles.rollout.actors, self.step)
            if cfg.eval.before_training and self.step == 0:  # the starting policy against itself
                self.baseline = self.evaluate(prefix="eval_before", samples=start_samples)
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
        step_start, self.timings = time.perf_counter(), {}
        while True:
            with self.timed("groups"):
                batch = self.pipeline.take(self.cfg.grpo.groups_per_step, self.version)
            with self.timed("train"):
                trained = self.train(batch)
            if not trained.lost:
                break
            lost = [g for g in batch if g.group.group_id in trained.lost]  # died with a node: sampled again
            log.warning("%d groups of the step died with their node before training: queued again", len(lost))
            self.pipeline.give_back(lost)
            self.recovery.workers_lost({"rollout": {g.rollout_worker for g in lost}})
        scores = [g.scored for g in batch]
        with self.timed("commit"):
            self.pipeline.trained(batch, self.step)
        self.version = trained.version
        with self.timed("publish"):
            self.weights.publish()
        self.pipeline.admit(self.version)
        pools = self.pipeline.report()
        metrics = self.report.figures(scores, pools, self.recovery.count, self.version) | trained.metrics
        metrics |= self.baseline
        self.baseline = {}
        if self.wants_eval(self.step + 1):
            metrics |= self.evaluate()
        metrics |= self.timings | {"timing/step": time.perf_counter() - step_start}
        self.report.report(self.step, self.version, metrics, batch, grid=self.wants_samples(self.step))
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

    # ---- figures ----------------------------------------------------------------------------------------

    def wants_samples(self, step: int) -> bool:
        every = self.cfg.logging.sample_grid_every
        return (
            step == 0
            or step == self.cfg.run.num_steps - 1
            or self.operator.stop_requested
            or (every > 0 and step % every == 0)
        )

    def wants_eval(self, next_step: int) -> bool:
        every = self.cfg.eval.every
        return every > 0 and (next_step % every == 0 or next_step == self.cfg.run.num_steps)

    def evaluate(self, prefix: str = "eval", samples: list[MediaGroup] | None = None) -> dict[str, float]:
        """ODE samples of the held-out prompts (fixed seeds, eval step count) at the current version, with the
        EMA of the weights when `learner.ema_decay` is on (`samples`: ones already made at this version), scored
        against the starting policy's samples by the evaluation scorers (orchestration/evaluation.py):
        `<prefix>/` metrics and a grid of the samples (`samples/<prefix>_<step>.png`)."""
        with self.timed("eval"):
            ema = samples is None and self.cfg.learner.ema_decay > 0 and self.weights.publish(ema=True) is not None
            try:
                if samples is None:
                    samples = self.evaluation.sample(self.roles.rollout.actors, self.version, ema)
                training = [spec.name for spec in self.operator.specs.versions[self.operator.specs.latest]]
                figures = self.evaluation.score(self.roles.reward.actors, samples, training)
            except LOST as err:  # a worker or its node died: this evaluation is skipped, the next one runs
                log.warning(
                    "%s at version %d skipped: a worker was lost (%s)", prefix, self.version, type(err).__name__
                )
                self.recovery.workers_lost(
                    {"rollout": set(self.roles.rollout.live), "reward": set(self.roles.reward.live)}
                )
                return {}
        metrics = {f"{prefix}/{k}": v for k, v in figures.items()} | {f"{prefix}/ema": float(ema)}
        self.logger.log_samples(self.step, [m.media for m in samples], self.evaluation.prompts, name=prefix)
        shown = {k.removeprefix(f"{prefix}/"): round(v, 4) for k, v in metrics.items() if k.endswith("_vs_start")}
        log.info("%s at version %d: %s", prefix, self.version, shown)
        return metrics

    # ---- checkpoints ------------------------------------------------------------------------------------

    def checkpoint(self) -> Path:
        """Learner state (every rank), the LoRA, the run state with the prompt-stream position; then the reward
        curve. The ledger position is the step: a resume rolls the ledger back to it."""
        with self.timed("checkpoint"):
            state = RunState(self.step, self.version, self.operator.specs.as_json(), self.pipeline.next_index)
            folder, kept = write_checkpoint(
                self.run_dir,
                state,
                partial(save_learner_state, self.roles, self.cfg),
                keep=self.cfg.run.keep_checkpoints,
            )
        self.checkpointed_step = self.step
        self.operator.checkpoint_written(str(folder))
        self.logger.plot_rewards()
        log.info("checkpoint %s (%.1fs)", folder, self.timings["timing/checkpoint"])
        self._settle_ledger(oldest=checkpoint_step(kept[0]))
        return folder

    def _settle_ledger(self, oldest: int) -> None:
        """Fold away the ledger records of groups trained `run.ledger_keep_steps` steps ago and before the oldest
        kept checkpoint, of step `oldest` (no resume goes back before it)."""
        before = min(oldest, self.step - self.cfg.run.ledger_keep_steps)
        if before > 0 and (settled := self.control.ledger_settle(before)):
            log.info(
                "ledger: %d groups trained before step %d settled (counted, their records folded)", settled, before
            )

    def _start_timeline(self) -> None:
        """The sample calls of the pipeline being replaced are void: one may wait for a version the restored
        learner reaches only after the groups it holds up (a dead worker's calls died with it)."""
        from actors.rollout_worker import WEIGHTS_THREAD

        self.timeline += 1
        for worker in self.roles.rollout.actors:
            try:
                ray.get(worker.start_timeline.options(concurrency_group=WEIGHTS_THREAD).remote(self.timeline))
            except LOST:
                pass

    def restore(self, folder: Path | None) -> None:
        """Continue from a checkpoint (None: from the start): learner state, step, versions, the reward spec,
        the ledger and the metrics rolled back to the checkpoint's step; the actors get the weights."""
        state = read_run_state(folder) if folder is not None else RunState(0, 0, self.operator.specs.as_json(), 0)
        if folder is not None:
            versions = ray.get([a.load_checkpoint.remote(str(folder / "learner")) for a in self.roles.learner.actors])
            if set(versions) != {state.policy_version}:
                raise RuntimeError(f"learner ranks restored versions {versions}, expected {state.policy_version}")
        self.step, self.version = state.step, state.policy_version
        self.operator.specs = RewardSpecs.from_json(self.cfg, state.reward_specs)
        if self.operator.specs.latest:
            self.operator.restore_workers(self.roles.reward.actors)
        requeued = [int(group_id.removeprefix("g")) for group_id in self.control.ledger_rollback(self.step)]
        next_index = max([state.next_index, *(i + 1 for i in requeued)])
        self._start_timeline()
        self.pipeline = self._new_pipeline(next_index=next_index, requeued=requeued)
        self.logger.forget_from(self.step)
        self.control.forget_metrics_from(self.step)
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

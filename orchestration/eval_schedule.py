"""Evaluation inside a running job: when it runs (`eval.every` steps, the last step, and once before training with
`eval.before_training`), and how it fits the job: the held-out prompts sampled at the current version (through
the EMA of the weights when the learner keeps one), scored against the starting policy's samples
(orchestration/evaluation.py), logged as `<prefix>/` metrics with a grid of the samples. A worker lost during an
evaluation skips it; the next one runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from cluster.ray_cluster import LOST
from flexgrpo.config import Config
from flexgrpo.records import MediaGroup
from orchestration.evaluation import Evaluation
from orchestration.reporting import MetricsLogger
from orchestration.roles import Roles
from orchestration.weights import WeightBroadcast

log = logging.getLogger("flexgrpo")


class EvalSchedule:
    def __init__(
        self,
        cfg: Config,
        roles: Roles,
        weights: WeightBroadcast,
        logger: MetricsLogger,
        run_dir: Path,
        on_workers_lost: Callable[[dict[str, set[int]]], None],
    ) -> None:
        """on_workers_lost({pool: slots}): called when an evaluation failed because a worker or its node died."""
        self.cfg, self.roles, self.weights, self.logger = cfg, roles, weights, logger
        self.on_workers_lost = on_workers_lost
        self.evaluation = Evaluation(cfg, run_dir)  # held-out prompts, scored against the starting policy
        self._baseline: dict[str, float] = {}  # the evaluation before training, logged with the first step

    def start(self, step: int, version: int, training: list[str]) -> None:
        """Before this job's first step: the starting policy's samples (made at step 0, read back on a resume);
        at step 0 with `eval.before_training`, the starting policy scored against itself."""
        if self.cfg.eval.every > 0 or self.cfg.eval.before_training:
            start_samples = self.evaluation.prepare(self.roles.rollout.actors, step)
            if self.cfg.eval.before_training and step == 0:
                self._baseline = self.evaluate(step, version, training, prefix="eval_before", samples=start_samples)

    def take_baseline(self) -> dict[str, float]:
        """The evaluation before training, once (it is logged with the first step)."""
        baseline, self._baseline = self._baseline, {}
        return baseline

    def due(self, next_step: int) -> bool:
        """Whether the step that makes `next_step` steps done ends with an evaluation."""
        every = self.cfg.eval.every
        return every > 0 and (next_step % every == 0 or next_step == self.cfg.run.num_steps)

    def evaluate(
        self,
        step: int,
        version: int,
        training: list[str],
        prefix: str = "eval",
        samples: list[MediaGroup] | None = None,
    ) -> dict[str, float]:
        """ODE samples of the held-out prompts (fixed seeds, eval step count) at `version`, with the EMA of the
        weights when `learner.ema_decay` is on (`samples`: ones already made at this version), scored against the
        starting policy's samples by the evaluation scorers (`training`: the training rewards' names):
        `<prefix>/` metrics and a grid of the samples (`samples/<prefix>_<step>.png`); {} when a worker was lost."""
        ema = samples is None and self.cfg.learner.ema_decay > 0 and self.weights.publish(ema=True) is not None
        try:
            if samples is None:
                samples = self.evaluation.sample(self.roles.rollout.actors, version, ema)
            figures = self.evaluation.score(self.roles.reward.actors, samples, training)
        except LOST as err:
            log.warning("%s at version %d skipped: a worker was lost (%s)", prefix, version, type(err).__name__)
            self.on_workers_lost({"rollout": set(self.roles.rollout.live), "reward": set(self.roles.reward.live)})
            return {}
        metrics = {f"{prefix}/{k}": v for k, v in figures.items()} | {f"{prefix}/ema": float(ema)}
        self.logger.log_samples(step, [m.media for m in samples], self.evaluation.prompts, name=prefix)
        shown = {k.removeprefix(f"{prefix}/"): round(v, 4) for k, v in metrics.items() if k.endswith("_vs_start")}
        log.info("%s at version %d: %s", prefix, version, shown)
        return metrics

"""Where a learner step's figures go: metrics.jsonl and TensorBoard (MetricsLogger), the control plane's metrics
stream and run registry (what `flexgrpo status` reads), status.json for when Redis is gone, sample grids with
the judges' replies, and one log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from flexgrpo.config import Config
from flexgrpo.control_plane import ControlPlane, write_status_file
from flexgrpo.records import ScoredGroup
from orchestration.pipeline import GroupInFlight
from orchestration.reporting import MetricsLogger
from orchestration.roles import Roles
from orchestration.step_figures import reward_figures, step_line

log = logging.getLogger("flexgrpo")
POOL_FIGURES = ("groups_per_s", "idle_frac", "queue_depth", "workers_live", "workers_wanted")
STATUS_FILE_EVERY_S = 5.0  # status.json (what `flexgrpo status` shows once Redis is gone) at most this often


class StepReport:
    def __init__(self, cfg: Config, roles: Roles, control: ControlPlane, logger: MetricsLogger, run_dir: Path):
        self.cfg, self.roles, self.control, self.logger, self.run_dir = cfg, roles, control, logger, run_dir
        self.learner_busy_s = 0.0  # time the learner trained since the last step's figures
        self._since = time.monotonic()
        self._status_written = -float("inf")  # when status.json was last written
        self.timings: dict[str, float] = {}  # `timing/<phase>` -> seconds, of the step in progress

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Time a phase of the step in progress (or a checkpoint) as `timing/<phase>`."""
        start = time.perf_counter()
        yield
        self.timings[f"timing/{phase}"] = time.perf_counter() - start

    def figures(self, scored: list[ScoredGroup], pools: dict[str, float], recoveries: int, version: int) -> dict:
        """The step's reward figures, the pools' (`pools`: the pipeline's report) and the learner's idle share
        since the last step."""
        elapsed = max(1e-9, time.monotonic() - self._since)
        idle = max(0.0, 1 - self.learner_busy_s / elapsed)
        self.learner_busy_s, self._since = 0.0, time.monotonic()
        return (
            reward_figures(scored)
            | pools
            | {
                "system/recoveries": float(recoveries),
                "policy/version": float(version),
                "learner/idle_frac": idle,
            }
        )

    def wants_grid(self, step: int, stopping: bool) -> bool:
        """Whether step `step` logs a sample grid: the first and last steps, the last before a stop, and every
        `logging.sample_grid_every` steps."""
        every = self.cfg.logging.sample_grid_every
        return step == 0 or step == self.cfg.run.num_steps - 1 or stopping or (every > 0 and step % every == 0)

    def report(self, step: int, version: int, metrics: dict[str, float], batch: list[GroupInFlight], grid: bool):
        """Step `step`'s metrics everywhere they go; with `grid`, a sample grid with the judges' parsed replies."""
        self.logger.log(step, metrics)
        self.control.publish_metrics(step, metrics)
        if time.monotonic() - self._status_written > STATUS_FILE_EVERY_S:
            write_status_file(self.run_dir, self.control.status())
            self._status_written = time.monotonic()
        pools = {k: round(v, 3) for k, v in metrics.items() if k.split("/")[-1] in POOL_FIGURES}
        self.control.update_run(
            step=step + 1,
            policy_version=version,
            reward_version=int(metrics["reward/version"]),
            pools=pools,
            waiting=self.roles.waiting(),
        )
        if grid:
            media = ray.get([g.media for g in batch])
            self.logger.log_samples(step, [m.media for m in media], [m.prompt for m in media])
            self.logger.log_judgements(step, {g.scored.group_id: g.scored.details for g in batch if g.scored.details})
        log.info(step_line(step, self.cfg.run.num_steps, metrics))

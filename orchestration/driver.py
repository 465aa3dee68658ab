"""The driver: `train(cfg)` runs a whole job top to bottom: Redis, Ray, the roles, resume, the loop, outputs."""

from __future__ import annotations

import logging
import signal
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from flexgrpo.config import Config, to_dict, to_yaml
from flexgrpo.control_plane import ControlPlane
from orchestration.checkpoints import latest_checkpoint
from orchestration.reporting import MetricsLogger, read_metrics
from orchestration.roles import build_roles, preflight
from orchestration.training_loop import TrainingLoop

log = logging.getLogger("flexgrpo")


@dataclass
class RunSummary:
    run_dir: Path
    steps: int  # steps in the run's metrics (a resumed run counts the steps before it too)
    reward_means: list[float]  # per step
    lora_dir: Path | None


@contextmanager
def stop_on_sigterm(loop: TrainingLoop):
    """Pre-emption: SIGTERM ends the loop at the next step boundary, after a checkpoint."""

    def handler(signum, frame):
        log.warning("SIGTERM: checkpointing and stopping")
        loop.stop_requested = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(cfg: Config) -> RunSummary:
    """Run a whole training job: Redis, Ray, pools and roles, the loop, final outputs."""
    from cluster.embedded_redis import EmbeddedRedis
    from cluster.ray_cluster import ray_session

    preflight(cfg)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    with ExitStack() as stack:
        redis_url = cfg.cluster.redis_url or stack.enter_context(EmbeddedRedis(run_dir / "redis"))
        url_file = run_dir / "redis_url"  # how an operator reaches this run (flexgrpo command ...)
        url_file.write_text(redis_url + "\n", encoding="utf-8")
        url_file.chmod(0o600)
        control = ControlPlane(redis_url, cfg.run.name)
        control.register_run(to_dict(cfg))
        stack.enter_context(ray_session(cfg.cluster, run_dir))
        logger = stack.enter_context(MetricsLogger(run_dir, cfg.logging))
        try:
            roles = build_roles(cfg)
            stack.callback(roles.shutdown)
            loop = TrainingLoop(cfg, roles, control, logger, run_dir)
            checkpoint = latest_checkpoint(run_dir) if cfg.run.resume else None
            if checkpoint is not None:
                loop.restore(checkpoint)
            stack.enter_context(stop_on_sigterm(loop))
            loop.run()
            lora_dir = loop.save_lora(run_dir / "lora") if cfg.policy.lora.enabled else None
        except BaseException:
            control.update_run(status="failed")
            raise
        control.update_run(status="finished")
    reward_means = [row["reward_mean"] for row in read_metrics(run_dir)]
    return RunSummary(run_dir, len(reward_means), reward_means, lora_dir)

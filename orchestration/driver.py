"""The driver: `train(cfg)` runs a whole job top to bottom.

1. claim the run directory (one owner per run: a lock file, then a Redis lease)
2. the control plane: the configured Redis, or an embedded one restarted from its append-only file on an outage
3. Ray and the roles (the composition root)
4. resume from the latest checkpoint: the ledger, the metrics and the prompt stream roll back to it
5. the trainer's loop, then the final outputs; the status ("finished", "stopped", "failed") is recorded
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from flexgrpo.config import Config, to_dict, to_yaml
from flexgrpo.control_plane import ControlPlane, read_status_file, write_status_file
from orchestration.checkpoints import latest_checkpoint, read_run_state
from orchestration.evaluation import last_win_rates
from orchestration.failures import describe_failure
from orchestration.learner_files import final_weights_dir, save_final_weights
from orchestration.ownership import RunOwnership
from orchestration.reporting import MetricsLogger, read_metrics
from orchestration.roles import build_roles, preflight
from orchestration.trainer import Trainer

log = logging.getLogger("flexgrpo")
LOG_FILE = "train.log"  # in the run directory: what the job logs, and the traceback of the error that ended it


@dataclass
class RunSummary:
    run_dir: Path
    status: str  # finished or stopped
    steps: int  # steps in the run's metrics (a resumed run counts the steps before it too)
    reward_means: list[float]  # per step
    win_rates: dict[str, tuple[float, float, float]]  # pairwise eval reward -> last win rate vs start, 95% lo, hi
    weights_dir: Path | None  # the trained weights as diffusers loads them: RUN_DIR/lora or RUN_DIR/transformer


@contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """While the job runs, what it logs also goes to RUN_DIR/train.log; the error that ends it is written there
    with its full traceback (and only there: the terminal gets one line)."""
    path = run_dir / LOG_FILE
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    except (Exception, KeyboardInterrupt) as err:
        args = (describe_failure(err),)
        handler.handle(logging.LogRecord(log.name, logging.ERROR, __file__, 0, "job failed: %s", args, sys.exc_info()))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


class StopSignals:
    """Pre-emption and Ctrl-C, held from the job's start to the end of its teardown. While the loop runs, SIGTERM
    or a first Ctrl-C (SIGINT) ends it at the next step boundary, after a checkpoint (status "stopped", `reason`
    says which); a second Ctrl-C stops at once, without one (the ledger stays the truth: the same command resumes
    from the last checkpoint). Before the loop (starting up, restoring) and after it (shutting down) there is no
    step boundary to wait for: either signal stops the job at once, saying when it came."""

    NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}

    def __init__(self) -> None:
        self.trainer: Trainer | None = None  # set once the loop can stop at a step boundary
        self.loop_over = False  # set once the loop returned (its last checkpoint, if any, is written)
        self.reason: str | None = None
        self.interrupted: str | None = None  # what a signal that stopped the job at once raised
        self.previous: dict[int, object] = {}
        self.taken_back = False  # until then, a SIGTERM meets the handler ray.init put in (see `take_back`)

    def __enter__(self) -> StopSignals:
        ours = [signum for signum in self.NAMES if signal.getsignal(signum) is not signal.SIG_IGN]  # (nohup, &)
        self.previous = {signum: signal.signal(signum, self.handle) for signum in ours}
        return self

    def take_back(self) -> None:
        """Ours again: `ray.init` puts in its own SIGTERM handler (a bare `sys.exit(15)`, no checkpoint) as it
        begins, so a SIGTERM while Ray starts meets that one (`named` says what it was)."""
        for signum in self.previous:
            signal.signal(signum, self.handle)
        self.taken_back = True

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if (named := self.named(exc)) is not exc:
            raise named from exc

    def named(self, exc: BaseException | None) -> BaseException | None:
        """`exc`, or, when it is a bare KeyboardInterrupt after a signal here stopped the job at once (a signal
        landing in one of Ray's own waits comes out of it so), or the exit of Ray's SIGTERM handler while Ray
        started, a KeyboardInterrupt that says what it was."""
        if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM and not self.taken_back:
            self.interrupted = f"{self.NAMES[signal.SIGTERM]} while the job started: stopped at once"
        elif not (self.interrupted and isinstance(exc, KeyboardInterrupt) and str(exc) != self.interrupted):
            return exc
        return KeyboardInterrupt(self.interrupted)

    def handle(self, signum: int, frame: object) -> None:
        name = self.NAMES[signum]
        in_loop = self.trainer is not None and not self.loop_over
        if in_loop and not (signum == signal.SIGINT and self.reason == name):
            more = "; Ctrl-C again to stop now, without one" if signum == signal.SIGINT else ""
            log.warning("%s: checkpointing and stopping at the end of this step%s", name, more)
            self.reason = name
            self.trainer.operator.stop_requested = True
            return
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self.previous[signal.SIGINT])  # the next one interrupts what runs then
        if in_loop:
            self.interrupted = f"{name} twice: stopped at once, without a final checkpoint"
        elif self.loop_over:
            self.interrupted = f"{name} while the job shut down, its loop over: stopped at once"
        else:
            self.interrupted = f"{name} while the job started: stopped at once"
        raise KeyboardInterrupt(self.interrupted)


def train(cfg: Config) -> RunSummary:
    """Run a whole training job: Redis, Ray, pools and roles, the loop, final outputs."""
    from cluster.ray_cluster import ray_session

    preflight(cfg)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        owner = stack.enter_context(RunOwnership(run_dir))  # a second job on this directory stops here
        stack.enter_context(run_log(run_dir))
        if (done := _finished_before(cfg, run_dir)) is not None:
            return done
        signals = stack.enter_context(StopSignals())  # (left last: a signal during the teardown is named too)
        (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        stack.enter_context(ray_session(cfg.cluster, run_dir))
        signals.take_back()
        redis_url, on_outage = _control_plane_redis(cfg, run_dir, stack)
        url_file = run_dir / "redis_url"  # how an operator reaches this run (flexgrpo command ...)
        url_file.write_text(redis_url + "\n", encoding="utf-8")
        url_file.chmod(0o600)
        control = ControlPlane(redis_url, cfg.run.name, on_outage=on_outage)
        owner.start_lease(control)
        stack.callback(owner.stop_lease)
        control.register_run(to_dict(cfg))
        status = "failed"
        stack.push(lambda *exc: _record_final_status(control, run_dir, status, signals.named(exc[1])))
        logger = stack.enter_context(MetricsLogger(run_dir, cfg.logging, run_config=to_dict(cfg)))
        roles = build_roles(cfg, control)
        stack.callback(roles.shutdown)
        trainer = Trainer(cfg, roles, control, logger, run_dir)
        trainer.restore(latest_checkpoint(run_dir) if cfg.run.resume else None)
        signals.trainer = trainer
        status = trainer.run()
        signals.loop_over = True
        if status == "stopped" and signals.reason:
            control.update_run(stop_reason=signals.reason)
        weights_dir = save_final_weights(roles, cfg, run_dir) if trainer.learner_lost is None else None
        logger.plot_rewards()
    return _summary(run_dir, status, weights_dir)


def _summary(run_dir: Path, status: str, weights_dir: Path | None) -> RunSummary:
    rows = read_metrics(run_dir)
    reward_means = [row["reward_mean"] for row in rows]
    return RunSummary(run_dir, status, len(reward_means), reward_means, last_win_rates(rows), weights_dir)


def _finished_before(cfg: Config, run_dir: Path) -> RunSummary | None:
    """The summary of a run that an earlier job finished (status "finished", its last checkpoint at
    run.num_steps or past it, its final weights written), which resuming would not train: read from disk,
    without starting Ray, Redis or a role. None: there is something to do."""
    status, folder = read_status_file(run_dir) or {}, latest_checkpoint(run_dir) if cfg.run.resume else None
    weights_dir = final_weights_dir(cfg, run_dir)
    if status.get("status") != "finished" or "failure" in status or folder is None or not weights_dir.is_dir():
        return None
    step = read_run_state(folder).step
    if step < cfg.run.num_steps:
        return None
    log.info("%s finished at step %d before: nothing to train (run.num_steps=%d)", run_dir, step, cfg.run.num_steps)
    return _summary(run_dir, "finished", weights_dir)


def _control_plane_redis(cfg: Config, run_dir: Path, stack: ExitStack) -> tuple[str, Callable[[], str] | None]:
    """The Redis URL handed to every worker, and how to restart it on an outage (None: not ours to restart).
    The configured one; else an embedded server: on loopback for a local Ray, on this node's cluster address
    (Ray's node IP) when the job joined a cluster, so that workers on other hosts reach it."""
    from cluster.embedded_redis import EmbeddedRedis
    from flexgrpo.net import node_ip

    if cfg.cluster.redis_url:
        return cfg.cluster.redis_url, None
    server = EmbeddedRedis(run_dir / "redis", host="127.0.0.1" if cfg.cluster.address is None else node_ip())
    url = stack.enter_context(server)
    log.info("control-plane Redis for the workers: %s:%d (embedded)", server.host, server.port)
    return url, server.restart


def _record_final_status(control: ControlPlane, run_dir: Path, status: str, error: BaseException | None = None) -> None:
    """The job's last word, in Redis and in status.json (with the line that says what ended it, on a failure).
    Never raises over the error that ended the job: when Redis is gone too, status.json still says how it ended."""
    final = {"status": status if error is None else "failed", "host": socket.gethostname()}
    if isinstance(error, KeyboardInterrupt):  # Ctrl-C: stopped by the user (without a final checkpoint), not failed
        final["status"], final["stop_reason"], error = "stopped", str(error) or "Ctrl-C", None
    if error is not None:
        final["failure"] = describe_failure(error)
    try:
        control.on_outage, control.outage_timeout_s = None, 10.0  # the job is ending: do not wait long for Redis
        control.update_run(**{k: v for k, v in final.items() if k != "host"})
        final = control.status() | final
    except Exception as err:  # noqa: BLE001  (the failure path must not raise a second error)
        log.error("could not record the final status %r in Redis: %s", status, err)
    try:
        write_status_file(run_dir, final)
    except OSError as err:
        log.error("could not write %s/status.json: %s", run_dir, err)

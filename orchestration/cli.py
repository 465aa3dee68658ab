"""The `flexgrpo` command.

flexgrpo train [RECIPE.yaml] [key=value ...]      run a training job (default recipe: configs/tiny.yaml)
flexgrpo status RUN_DIR                          a job's registry entry, lease, worker heartbeats, rejected commands
flexgrpo command RUN_DIR OP [--rewards FILE] [--pool P --workers N] [--timeout S] [--no-wait]
                                                 send an operator command and wait for its outcome (scale: grow or
                                                 shrink the rollout or reward pool of a running job)
flexgrpo audit RUN_DIR                           groups trained, dropped, lost, trained twice (exit 1 on any of the
                                                 last two)
flexgrpo eval RUN_DIR [--prompts F] [--out DIR] [--rewards FILE] [key=value ...]
                                                 a finished run's final LoRA against its starting policy
flexgrpo eval --baseline MODEL [--baseline-lora DIR] --candidate MODEL [--candidate-lora DIR] --prompts F
              --out DIR [--config RECIPE] [--rewards FILE] [key=value ...]
                                                 two policies (MODEL: tiny name, folder, hub id, a run directory
                                                 or one of its checkpoints) compared on a prompt file

Every error is one line on stderr and an exit code: 2 for usage and config errors, 1 for runtime ones (`train`
names the role that failed and the cause; the traceback is in RUN_DIR/train.log), 130 for Ctrl-C twice (`train`:
the first one stops at the next step boundary after a checkpoint, exit 0, as SIGTERM does). `status`
and `command` import no torch (swap_reward's reward check aside).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from flexgrpo.config import ConfigError, load_config
from flexgrpo.control_plane import (
    COMMAND_OPS,
    LIVE_STATUSES,
    STATUS_FILE,
    ControlPlane,
    ControlPlaneUnavailable,
    RunOwnedError,
    read_status_file,
)

DEFAULT_COMMAND_TIMEOUT_S = 300.0


class CliError(Exception):
    """One line for the operator and the exit code (2: usage or config, 1: runtime)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class _NoTracebackFormatter(logging.Formatter):
    """The terminal's log lines: a logged exception shows as its message, its traceback goes to the run's log."""

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_info and not record.exc_text:
            return super().format(record)
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record) + " (traceback in the run's train.log)"
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def _run_dir(arg: str) -> tuple[Path, str]:
    """The run directory and its Redis URL, or a usage error that says what is wrong with it."""
    run_dir = Path(arg)
    if not run_dir.is_dir():
        raise CliError(f"{arg} is not a directory: give the run directory (run.output_dir/run.name)", 2)
    url_file = run_dir / "redis_url"
    if not url_file.is_file():
        raise CliError(f"{arg} is not a run directory: no redis_url file (a job writes it when it starts)", 2)
    return run_dir, url_file.read_text(encoding="utf-8").strip()


def _connect(arg: str) -> tuple[Path, ControlPlane]:
    """The run's control plane, failing at once (no outage wait) when its Redis is not running."""
    run_dir, url = _run_dir(arg)
    return run_dir, ControlPlane(url, run_dir.name, outage_timeout_s=0)


def _not_running(control: ControlPlane) -> str:
    return f"the Redis of run {control.run!r} is not running at {control.address} (the job has ended)"


def _status(arg: str) -> int:
    run_dir, control = _connect(arg)
    try:
        status = control.status()
    except ControlPlaneUnavailable:
        status = read_status_file(run_dir)
        if status is None:
            raise CliError(f"{_not_running(control)}, and {run_dir / STATUS_FILE} is missing", 1) from None
        if status.get("status") in LIVE_STATUSES:  # written by a job that did not get to say how it ended
            written = status.get("written_at")
            known = isinstance(written, int | float)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(written)) if known else "unknown"
            status["status"], status["last_beat"] = "lost", when
        print(f"{_not_running(control)}; its last status, from {run_dir / STATUS_FILE}:", file=sys.stderr)
    print(json.dumps(status, indent=2, default=str))
    return 0


def _read_rewards(path: str | None) -> list[dict[str, Any]]:
    """A swap_reward's --rewards file: a YAML/JSON list of reward specs, checked like the config's `rewards`."""
    if path is None:
        raise CliError("swap_reward needs --rewards FILE (a YAML or JSON list of reward specs)", 2)
    if not Path(path).is_file():
        raise CliError(f"--rewards file {path} does not exist", 2)
    from omegaconf import OmegaConf

    try:
        rewards = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # noqa: BLE001  (yaml and omegaconf raise many kinds)
        raise CliError(f"cannot parse --rewards file {path}: {str(err).splitlines()[0]}", 2) from None
    if not isinstance(rewards, list) or not rewards:
        raise CliError(f"--rewards file {path} must hold a non-empty list of reward specs", 2)
    from flexgrpo.config import Config, with_rewards
    from reward_workers.registry import check_reward_specs

    try:
        check_reward_specs(with_rewards(Config(), rewards))
    except ValueError as err:
        raise CliError(f"--rewards file {path}: {err}", 2) from None
    return rewards  # type: ignore[return-value]


def _command(args: argparse.Namespace) -> int:
    if args.op not in COMMAND_OPS:
        raise CliError(f"unknown command {args.op!r}: one of {list(COMMAND_OPS)}", 2)
    if args.rewards and args.op != "swap_reward":
        raise CliError("--rewards goes with swap_reward only", 2)
    if (args.pool is not None or args.workers is not None) != (args.op == "scale"):
        raise CliError("scale takes --pool rollout|reward and --workers N (and they go with scale only)", 2)
    if args.op == "scale" and (args.pool is None or args.workers is None):
        raise CliError("scale needs both --pool rollout|reward and --workers N", 2)
    _, control = _connect(args.run_dir)
    extra = {"rewards": _read_rewards(args.rewards)} if args.op == "swap_reward" else {}
    if args.op == "scale":
        extra = {"pool": args.pool, "workers": args.workers}
    try:
        if control.lease() is None:
            raise CliError(f"run {control.run!r} has no live job to carry the command out (see flexgrpo status)", 1)
        command_id = control.send_command(args.op, **extra)
        if args.no_wait:
            print(f"command {command_id} ({args.op}) sent")
            return 0
        outcome = control.wait_for_outcome(command_id, args.timeout)
    except ControlPlaneUnavailable:
        raise CliError(_not_running(control), 1) from None
    except TimeoutError as err:
        raise CliError(str(err), 1) from None
    reason = f": {outcome['reason']}" if outcome["reason"] else ""
    print(f"command {command_id} ({args.op}): {outcome['status']}{reason}")
    return 0 if outcome["status"] == "done" else 1


def _audit(arg: str) -> int:
    run_dir, control = _connect(arg)
    try:
        return _print_audit(control)
    except ControlPlaneUnavailable:
        pass
    return _audit_stored(run_dir, control)


def _audit_stored(run_dir: Path, live: ControlPlane) -> int:
    """Audit a finished run: a redis-server of its own on a copy of RUN_DIR/redis (the run's files stay as
    they are), loaded from the append-only file, stopped afterwards."""
    import shutil
    import tempfile

    from cluster.embedded_redis import EmbeddedRedis

    data = run_dir / "redis"
    if not data.is_dir():
        raise CliError(f"{_not_running(live)}, and its data folder {data} is missing", 1)
    with tempfile.TemporaryDirectory(prefix="flexgrpo-audit-") as tmp:
        copy = Path(tmp) / "redis"
        shutil.copytree(data, copy, ignore=shutil.ignore_patterns("redis.log"))
        try:
            server = EmbeddedRedis(copy)
            url = server.start()
        except RuntimeError as err:
            raise CliError(f"cannot read the stored Redis of {run_dir}: {err}", 1) from None
        try:
            print(f"(the job's Redis is not running: read {data} with a redis-server of its own)", file=sys.stderr)
            return _print_audit(ControlPlane(url, live.run, outage_timeout_s=10))
        finally:
            server.stop()


def _print_audit(control: ControlPlane) -> int:
    info = control.run_info()
    final_step, status = int(info.get("step", 0)), info.get("status", "?")
    report = control.audit(final_step, finished=status == "finished")
    dropped = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.dropped.items()))
    print(f"run {control.run} ({status}): {final_step} steps in the final weights")
    print(f"groups trained:       {report.trained}")
    print(f"groups dropped:       {sum(report.dropped.values())}" + (f" ({dropped})" if dropped else ""))
    print(f"groups lost:          {len(report.lost)}" + _some(report.lost))
    if report.pending:
        print(f"groups pending:       {len(report.pending)} (queued again on resume)" + _some(report.pending))
    print(f"groups trained twice: {len(report.trained_twice)}" + _some(report.trained_twice))
    if report.settled:
        print(f"groups settled:       {report.settled} (counted above; their ledger records were folded away)")
    print("audit passed" if report.ok else "audit FAILED: groups lost or trained twice")
    return 0 if report.ok else 1


def _some(ids: list[str], shown: int = 20) -> str:
    if not ids:
        return ""
    return " (" + " ".join(ids[:shown]) + (f" ... {len(ids) - shown} more" if len(ids) > shown else "") + ")"


def _release(err: BaseException) -> None:
    """Let go of what the frames of the error that ended a job hold, so that the loop's progress bar prints its
    last state now, before the error's line, rather than after it at exit."""
    import traceback

    traceback.clear_frames(err.__traceback__)


def _train(argv: list[str]) -> int:
    recipe = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if recipe else argv
    try:
        cfg = load_config(recipe, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from orchestration.watchdog import start_watchdog

    start_watchdog()  # before anything starts: whatever the job starts dies with it
    _quiet_libraries()
    console = logging.StreamHandler()
    console.setFormatter(_NoTracebackFormatter("%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    from tqdm.contrib.logging import logging_redirect_tqdm

    from orchestration.driver import LOG_FILE, train
    from orchestration.failures import describe_failure

    log_file = Path(cfg.run.output_dir) / cfg.run.name / LOG_FILE
    try:
        with logging_redirect_tqdm():
            summary = train(cfg)
    except ConfigError as err:  # bad input found once the job had started is still bad input
        raise CliError(f"config error: {err}", 2) from None
    except (RunOwnedError, ControlPlaneUnavailable) as err:
        raise CliError(str(err), 1) from None
    except KeyboardInterrupt as err:  # Ctrl-C twice (the first one stops at the next step boundary): the shell's code
        _release(err)
        what = str(err) or "stopped without a final checkpoint"
        raise CliError(f"interrupted: {what}; the same command resumes (log: {log_file})", 130) from None
    except Exception as err:  # noqa: BLE001  (any other failure: one line here, its traceback in the run's log)
        _release(err)
        raise CliError(f"{describe_failure(err)} (traceback: {log_file})", 1) from None
    print(f"run directory: {summary.run_dir} ({summary.status})")
    means, k = summary.reward_means, max(1, len(summary.reward_means) // 5)
    if means:
        print(f"mean reward, first {k} steps: {sum(means[:k]) / k:.4f}")
        print(f"mean reward, last {k} steps:  {sum(means[-k:]) / k:.4f}")
    for name, (rate, lo, hi) in summary.win_rates.items():
        print(f"win rate against the start ({name}, last evaluation): {rate:.3f} [95% {lo:.3f}, {hi:.3f}]")
    if summary.weights_dir:
        what = "LoRA" if summary.weights_dir.name == "lora" else "transformer"
        print(f"{what} (diffusers format): {summary.weights_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    run_dir = args.args[0] if args.args and "=" not in args.args[0] else None
    overrides = args.args[1:] if run_dir else args.args
    explicit = args.baseline or args.candidate or args.baseline_lora or args.candidate_lora or args.config
    if run_dir and explicit:
        raise CliError("give RUN_DIR or --baseline/--candidate, not both", 2)
    if not run_dir and not (args.baseline and (args.candidate or args.candidate_lora)):
        raise CliError("give RUN_DIR, or --baseline MODEL and --candidate MODEL (or --candidate-lora DIR)", 2)
    if not run_dir and not args.out:
        raise CliError("--out DIR is needed to compare two policies", 2)
    rewards = _read_rewards(args.rewards) if args.rewards else None
    _quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from orchestration.eval_run import EvalInputError, eval_policies, eval_run
    from orchestration.failures import describe_failure

    prompts, out = Path(args.prompts) if args.prompts else None, Path(args.out) if args.out else None
    try:
        if run_dir:
            path = eval_run(Path(run_dir), prompts, out, overrides, rewards)
        else:
            baseline = (args.baseline, args.baseline_lora)
            candidate = (args.candidate or args.baseline, args.candidate_lora)
            config = Path(args.config) if args.config else None
            path = eval_policies(baseline, candidate, prompts, Path(args.out), config, overrides, rewards)
    except (EvalInputError, ConfigError) as err:
        raise CliError(str(err), 2) from None
    except Exception as err:  # noqa: BLE001  (a worker that failed: one line naming it and the cause)
        raise CliError(describe_failure(err), 1) from None
    print((path.parent / "eval.md").read_text(encoding="utf-8"), end="")
    print(f"written: {path} (and eval.md, pairs_*.png beside it)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flexgrpo", description="Distributed GRPO for diffusion models.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_train = sub.add_parser("train", help="run a training job")
    p_train.add_argument("args", nargs="*", help="[RECIPE.yaml] [key=value ...]")
    p_status = sub.add_parser("status", help="a job's registry entry, lease, heartbeats and rejected commands")
    p_status.add_argument("run_dir")
    p_cmd = sub.add_parser("command", help="send an operator command to a running job and wait for its outcome")
    p_cmd.add_argument("run_dir")
    p_cmd.add_argument("op", help=f"one of {', '.join(COMMAND_OPS)}")
    p_cmd.add_argument("--rewards", help="swap_reward: YAML/JSON file with a list of reward specs")
    p_cmd.add_argument("--pool", choices=("rollout", "reward"), help="scale: the pool to grow or shrink")
    p_cmd.add_argument("--workers", type=int, help="scale: the pool's size from now on (>= 1)")
    p_cmd.add_argument(
        "--timeout", type=float, default=DEFAULT_COMMAND_TIMEOUT_S, help="seconds to wait for the outcome"
    )
    p_cmd.add_argument("--no-wait", action="store_true", help="send and return without waiting for the outcome")
    p_audit = sub.add_parser("audit", help="check from the ledger that every group was trained exactly once")
    p_audit.add_argument("run_dir")
    p_eval = sub.add_parser(
        "eval", help="compare two policies on a prompt set (a run's final LoRA with its start, or any two)"
    )
    p_eval.add_argument("args", nargs="*", help="[RUN_DIR] [key=value ...] (overrides of the run's or --config)")
    p_eval.add_argument("--baseline", help="MODEL: tiny model name, diffusers folder, hub id, run dir or checkpoint")
    p_eval.add_argument("--baseline-lora", help="LoRA folder loaded into the baseline (as a run writes lora/)")
    p_eval.add_argument("--candidate", help="MODEL as --baseline (default: the baseline's, with --candidate-lora)")
    p_eval.add_argument("--candidate-lora", help="LoRA folder loaded into the candidate")
    p_eval.add_argument(
        "--config",
        help="recipe whose sampler and eval settings are used (default configs/tiny.yaml,"
        " or the candidate run's config)",
    )
    p_eval.add_argument("--prompts", help="prompt file: one prompt a line, or JSONL with 'prompt' and 'tag'")
    p_eval.add_argument(
        "--rewards", help="YAML/JSON list of reward specs to score with (default: eval.rewards, else the rewards)"
    )
    p_eval.add_argument("--out", help="output folder (default RUN_DIR/eval; needed with --baseline)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed as one line
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if args.cmd == "status":
            return _status(args.run_dir)
        if args.cmd == "command":
            return _command(args)
        if args.cmd == "audit":
            return _audit(args.run_dir)
        if args.cmd == "eval":
            return _eval(args)
        return _train(args.args)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (imports, status, audit, eval): 128 + SIGINT
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `flexgrpo` command.

flexgrpo train [RECIPE.yaml] [key=value ...]      run a training job (default recipe: configs/tiny.yaml)
flexgrpo command RUN_DIR OP [--rewards FILE]     send an operator command to a running job
flexgrpo status RUN_DIR                          print the run registry entry of a job
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from flexgrpo.config import ConfigError, load_config
from flexgrpo.control_plane import COMMAND_OPS, CommandError, ControlPlane


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def _control(run_dir: str) -> ControlPlane:
    url_file = Path(run_dir) / "redis_url"
    if not url_file.is_file():
        raise SystemExit(f"error: {url_file} not found: is {run_dir!r} the directory of a started run?")
    return ControlPlane(url_file.read_text().strip(), Path(run_dir).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flexgrpo", description="Distributed GRPO for diffusion models.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_train = sub.add_parser("train", help="run a training job")
    p_train.add_argument("args", nargs="*", help="[RECIPE.yaml] [key=value ...]")
    p_cmd = sub.add_parser("command", help="send an operator command to a running job")
    p_cmd.add_argument("run_dir")
    p_cmd.add_argument("op", choices=COMMAND_OPS)
    p_cmd.add_argument("--rewards", help="swap_reward: YAML/JSON file with a list of reward specs")
    p_status = sub.add_parser("status", help="print a job's registry entry")
    p_status.add_argument("run_dir")
    args = parser.parse_args(argv)

    if args.cmd == "status":
        control = _control(args.run_dir)
        info = control.run_info() | {"heartbeat_age_s": {w: round(a, 1) for w, a in control.heartbeat_ages().items()}}
        print(json.dumps(info, indent=2))
        return 0
    if args.cmd == "command":
        extra = {}
        if args.op == "swap_reward":
            if not args.rewards:
                raise SystemExit("error: swap_reward needs --rewards FILE (a list of reward specs)")
            from omegaconf import OmegaConf

            extra["rewards"] = OmegaConf.to_container(OmegaConf.load(args.rewards))
        try:
            _control(args.run_dir).send_command(args.op, **extra)
        except CommandError as err:
            raise SystemExit(f"error: {err}") from None
        return 0

    recipe = args.args[0] if args.args and "=" not in args.args[0] else None
    overrides = args.args[1:] if recipe else args.args
    try:
        cfg = load_config(recipe, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    _quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from orchestration.driver import train

    with logging_redirect_tqdm():
        summary = train(cfg)
    print(f"run directory: {summary.run_dir}")
    means, k = summary.reward_means, max(1, len(summary.reward_means) // 5)
    if means:
        print(f"mean reward, first {k} steps: {sum(means[:k]) / k:.4f}")
        print(f"mean reward, last {k} steps:  {sum(means[-k:]) / k:.4f}")
    if summary.lora_dir:
        print(f"LoRA (diffusers format): {summary.lora_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

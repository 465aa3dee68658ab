"""Streaming pipeline vs synchronous steps, on the tiny recipe's real roles (Ray actors, DeepSpeed, Redis).

Each stage in turn is made the bottleneck by a hold (a sleep per group or per step that leaves the CPU free,
standing in for a GPU-bound stage). For each, the same job runs synchronously (max_staleness 0) and streaming
(max_staleness 2): groups/s of each, their ratio, and streaming over the bottleneck stage's own throughput
(the stage alone, the same class in this process, goal >= 0.9). Then, with no hold, the synchronous system's
step time against one plain process doing the same work with the same classes and no Ray or Redis (the
system's overhead, goal <= 1.25x).

    python benchmarks/bench_pipeline.py [--hold 1.0] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("FLEXGRPO_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "flexgrpo"))

import ray  # noqa: E402

from flexgrpo.config import Config, load_config  # noqa: E402
from flexgrpo.net import free_port  # noqa: E402
from flexgrpo.prompts import load_prompts, prompt_group  # noqa: E402
from orchestration.driver import train  # noqa: E402

GROUPS_PER_STEP, GROUP_SIZE, WARMUP = 2, 4, 2


def tiny(out: Path, name: str, steps: int, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"run.output_dir={out}",
            f"run.name={name}",
            f"run.num_steps={steps}",
            f"grpo.groups_per_step={GROUPS_PER_STEP}",
            f"grpo.group_size={GROUP_SIZE}",
            "logging.tensorboard=false",
            *overrides,
        ],
    )


def system_groups_per_s(cfg: Config) -> tuple[float, float]:
    """Run the job; -> (groups/s, mean step time) over the steps after the warm-up ones."""
    train(cfg)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][WARMUP:]
    seconds = sum(r["timing/step"] for r in rows)
    return len(rows) * GROUPS_PER_STEP / seconds, seconds / len(rows)


class PlainProcess:
    """The same classes as the roles, in this process: no Ray, no Redis, no weight-sync group."""

    def __init__(self, cfg: Config) -> None:
        from actors.rollout_worker import RolloutWorker
        from learner.learner import GRPOLearner
        from reward_workers.reward_worker import RewardWorker

        h = cfg.holds
        self.cfg, self.prompts = cfg, load_prompts(cfg.prompts)
        self.rollout = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed, hold_s=h.rollout_s)
        self.reward = RewardWorker(cfg.rewards, hold_s=h.reward_s)
        self.learner = GRPOLearner(
            cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port(), hold_s=h.learner_s
        )
        self.index = 0

    def sample(self):
        group = prompt_group(self.prompts, self.index, group_size=GROUP_SIZE, seed=0)
        self.index += 1
        return self.rollout.sample(group, min_version=0)

    def step(self) -> None:
        groups = [self.sample() for _ in range(GROUPS_PER_STEP)]
        scores = [self.reward.score(media) for _, media in groups]
        self.learner.train_step(scores, *[t for t, _ in groups])
        for name, value in self.learner.trainable_state().items():
            self.rollout.params[name].data.copy_(value)
        self.rollout.version = self.learner.version

    def timed(self, fn, n: int) -> float:
        """Seconds per call of `fn`, after one warm-up call."""
        fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n


def stage_groups_per_s(plain: PlainProcess, stage: str, n: int = 4) -> float:
    """The stage alone: how many groups per second it handles back to back."""
    if stage == "sampling":
        return 1 / plain.timed(plain.sample, n)
    if stage == "scoring":
        _, media = plain.sample()
        return 1 / plain.timed(lambda: plain.reward.score(media), n)
    groups = [plain.sample() for _ in range(GROUPS_PER_STEP)]
    scores = [plain.reward.score(m) for _, m in groups]
    trajectories = [t for t, _ in groups]

    def train_step():
        plain.learner.version = 0  # the same groups again, as fresh as the first time
        plain.learner.train_step(scores, *trajectories)

    return GROUPS_PER_STEP / plain.timed(train_step, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", type=float, default=1.0, help="seconds of hold per group in the held stage")
    parser.add_argument("--steps", type=int, default=10, help="learner steps per job (2 warm-up steps excluded)")
    parser.add_argument("--stages", nargs="*", default=["sampling", "scoring", "training"], help="bottlenecks to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ray.init(num_cpus=2, num_gpus=3, include_dashboard=False, log_to_driver=False)
    out = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    holds = {
        "sampling": [f"holds.rollout_s={args.hold}"],
        "scoring": [f"holds.reward_s={args.hold}"],
        "training": [f"holds.learner_s={args.hold * GROUPS_PER_STEP}"],
    }
    rows = []
    for stage, hold in ((k, v) for k, v in holds.items() if k in args.stages):
        sync, _ = system_groups_per_s(tiny(out, f"{stage}-sync", args.steps, *hold))
        stream, _ = system_groups_per_s(tiny(out, f"{stage}-async", args.steps, "grpo.max_staleness=2", *hold))
        alone = stage_groups_per_s(PlainProcess(tiny(out, f"{stage}-alone", 1, *hold)), stage)
        rows.append((stage, sync, stream, stream / sync, alone, stream / alone))

    _, system_step = system_groups_per_s(tiny(out, "overhead-sync", args.steps))
    plain = PlainProcess(tiny(out, "overhead-plain", 1))
    plain_step = plain.timed(plain.step, args.steps - WARMUP)
    ray.shutdown()

    print(f"\nhold {args.hold:.2f} s per group in the bottleneck stage; {GROUPS_PER_STEP} groups of {GROUP_SIZE}/step")
    print("| bottleneck | sync groups/s | async groups/s | async / sync | stage alone groups/s | async / stage |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stage, sync, stream, ratio, alone, share in rows:
        print(f"| {stage} | {sync:.2f} | {stream:.2f} | {ratio:.2f}x | {alone:.2f} | {share:.2f} |")
    print("\n| no hold | step time s | ratio |")
    print("| --- | --- | --- |")
    print(f"| one plain process (same classes, no Ray/Redis) | {plain_step:.3f} | 1.00x |")
    print(f"| the system, synchronous | {system_step:.3f} | {system_step / plain_step:.2f}x |")


if __name__ == "__main__":
    main()

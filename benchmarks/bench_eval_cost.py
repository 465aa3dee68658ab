"""What an evaluation costs against a training step: measured on the tiny recipe, estimated for the real ones.

    python benchmarks/bench_eval_cost.py [--steps 10] [--evals 4] [RECIPE.yaml] [key=value ...]

Measured, in this process on the recipe (default configs/tiny.yaml): the median seconds of a training step of a
job that never evaluates (`--steps` steps, the first two left out), the median seconds of an evaluation
(`timing/eval`: the held-out prompts sampled with the ODE sampler and scored against the starting policy's
samples) of a job that evaluates after each of `--evals` steps, and their ratio.

Estimated, for every recipe in configs/: the same ratio by step counts, denoiser passes of an evaluation
(eval.num_prompts x eval.samples_per_prompt x sampler.eval_num_steps) over those of a step's rollouts
(grpo.group_size x grpo.groups_per_step x sampler.num_steps); the learner's backward passes, the judge's calls
and the overlap of the streaming pipeline are left out. The judge requests of each side are printed beside it
(an evaluation judges every sample against its start sample in both orders). Printed for the tiny recipe too, to
compare the estimate with the measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from flexgrpo.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 2  # steps left out of the step time (actors starting, first compilations)


def run_job(recipe: str | None, overrides: list[str], steps: int, every: int) -> list[dict]:
    """Train the recipe for `steps` steps in this process, evaluating every `every` (0: never). -> its metrics"""
    from orchestration.driver import train

    out = Path(tempfile.mkdtemp(prefix="flexgrpo-bench-eval-"))
    job = [f"run.output_dir={out}", "run.name=bench", f"run.num_steps={steps}", f"eval.every={every}"]
    train(load_config(recipe, [*overrides, *job, "eval.before_training=false"]))
    return [json.loads(line) for line in (out / "bench" / "metrics.jsonl").read_text().splitlines()]


def measure(recipe: str | None, overrides: list[str], steps: int, evals: int) -> tuple[float, float]:
    """-> (median s of an evaluation, median s of a training step): the step from a job that never evaluates
    (its first steps left out), the evaluation from one that evaluates after every step (the streaming pipeline
    keeps sampling training groups meanwhile, so a step that follows an evaluation finds them ready)."""
    plain = run_job(recipe, overrides, steps, every=0)[WARMUP_STEPS:]
    evaluated = run_job(recipe, overrides, evals, every=1)
    return statistics.median(r["timing/eval"] for r in evaluated), statistics.median(r["timing/step"] for r in plain)


def counts(cfg: Config) -> dict[str, int]:
    """Denoiser passes and judge requests of one evaluation and of one training step."""
    from reward_workers.registry import PAIRWISE
    from reward_workers.winrate import judge_pairs

    e, g, s = cfg.eval, cfg.grpo, cfg.sampler
    eval_rewards = e.rewards or cfg.rewards
    return {
        "eval_passes": e.num_prompts * e.samples_per_prompt * s.eval_num_steps,
        "step_passes": g.group_size * g.groups_per_step * s.num_steps,
        "eval_requests": sum(2 * e.num_prompts * e.samples_per_prompt for r in eval_rewards if r.name in PAIRWISE),
        "step_requests": sum(
            g.groups_per_step * len(judge_pairs(g.group_size, r.pairs_per_sample, r.both_orders))
            for r in cfg.rewards
            if r.name in PAIRWISE
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps of the job that never evaluates")
    parser.add_argument("--evals", type=int, default=4, help="steps (one evaluation each) of the evaluating job")
    parser.add_argument("args", nargs="*", help="[RECIPE.yaml] [key=value ...] (default: configs/tiny.yaml)")
    args = parser.parse_args()
    recipe = args.args[0] if args.args and "=" not in args.args[0] else None
    overrides = args.args[1:] if recipe else args.args
    eval_s, step_s = measure(recipe, overrides, args.steps, args.evals)

    name = Path(recipe).stem if recipe else "tiny"
    print(f"\nmeasured ({name}, this machine; {args.evals} evaluations, {args.steps - WARMUP_STEPS} steps):\n")
    c = counts(load_config(recipe, overrides))
    print("| recipe | s per evaluation | s per training step | evaluation / step | estimate by step counts |")
    print("|---|---|---|---|---|")
    print(
        f"| {name} | {eval_s:.2f} | {step_s:.2f} | {eval_s / step_s:.2f} | {c['eval_passes'] / c['step_passes']:.2f} |"
    )

    print("\nestimated by step counts (denoiser passes; learner backward, judge calls and overlap left out):\n")
    print(
        "| recipe | eval passes (prompts x samples x ODE steps) | step passes (G x groups x steps) "
        "| evaluation / step | eval.every | share of training | judge requests eval / step |"
    )
    print("|---|---|---|---|---|---|---|")
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        c, e, g, s = counts(cfg), cfg.eval, cfg.grpo, cfg.sampler
        ratio = c["eval_passes"] / c["step_passes"]
        share = f"{ratio / e.every:.1%}" if e.every else "no evaluation"
        print(
            f"| {path.stem} | {e.num_prompts} x {e.samples_per_prompt} x {s.eval_num_steps} = {c['eval_passes']} "
            f"| {g.group_size} x {g.groups_per_step} x {s.num_steps} = {c['step_passes']} | {ratio:.2f} "
            f"| {e.every or '-'} | {share} | {c['eval_requests']} / {c['step_requests']} |"
        )


if __name__ == "__main__":
    main()

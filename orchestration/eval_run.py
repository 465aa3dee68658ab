"""`flexgrpo eval RUN_DIR`: a finished run's final weights against its starting policy, without training.

The run's own settings (policy, ODE sampler steps, guidance, resolution, samples per prompt, seeds, evaluation
scorers: `eval.rewards` or the training rewards) on the run's held-out prompts or on a prompt file (one prompt a
line, or JSONL with `prompt` and an optional `tag`, GenEval's metadata format). Sampling and judging go through a
rollout and a reward pool of Ray actors, as in training, and the figures are those of the in-loop evaluation
(orchestration/evaluation.py), here per tag too. Writes into `--out` (default `RUN_DIR/eval/`): `eval.json`,
`eval.md` (a Markdown table) and `pairs_<k>.png` (baseline | candidate per prompt, the verdicts below).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from flexgrpo.config import Config, load_config
from flexgrpo.records import MediaGroup, PromptGroup, VersusStart
from orchestration.evaluation import eval_groups, eval_settings, mean_interval

log = logging.getLogger("flexgrpo")


class EvalInputError(ValueError):
    """A run directory or prompt file that cannot be evaluated; the message says what is wrong."""


def read_prompt_file(path: Path) -> list[tuple[str, str | None]]:
    """(prompt, tag) pairs from a text file (one prompt a line) or a JSONL file (`prompt`, optional `tag`)."""
    if not path.is_file():
        raise EvalInputError(f"prompt file {path} does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return [(line, None) for line in lines]
    prompts = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalInputError(f"{path}:{n} is not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise EvalInputError(f"{path}:{n} has no string field 'prompt'")
        prompts.append((row["prompt"], None if row.get("tag") is None else str(row["tag"])))
    return prompts


def _figures(values: torch.Tensor, bounds: tuple[float, float] | None) -> dict:
    mean, lo, hi = mean_interval(values, bounds)
    return {"mean": mean, "ci95": [lo, hi], "n": values.numel()}


def summarize(results: list[VersusStart], tags: dict[str, str | None], settings: dict) -> dict:
    """eval.json: per reward, over prompts and per tag, the candidate's win rate against the baseline (pairwise)
    or the baseline and candidate means and their difference (pointwise), each with a 95% interval over prompts.
    `tags`: group id -> tag."""
    rewards: dict[str, dict] = {}
    for name in dict.fromkeys(r.reward for r in results):
        rows = [r for r in results if r.reward == name]
        subsets = {None: rows} | {
            t: [r for r in rows if tags[r.group_id] == t] for t in sorted(set(tags.values()) - {None})
        }
        entry: dict = {"pairwise": rows[0].pairwise, "per_tag": {}}
        for tag, subset in subsets.items():
            if rows[0].pairwise:
                wins = torch.stack([r.candidate[""].mean() for r in subset])  # [P]
                figures = _figures(wins, (0.0, 1.0))
                figures = {"win_rate": figures.pop("mean")} | figures
            else:
                cand = torch.stack([r.candidate[""].mean() for r in subset])
                base = torch.stack([r.reference[""].mean() for r in subset])
                figures = _figures(cand - base, None)
                figures = (
                    {"baseline_mean": base.mean().item(), "candidate_mean": cand.mean().item()}
                    | {"delta": figures.pop("mean")}
                    | figures
                )
            if tag is None:
                entry |= figures
            else:
                entry["per_tag"][tag] = figures
        decided = sum(r.position_decided for r in rows)
        if rows[0].pairwise and decided:
            entry["first_position_rate"] = sum(r.first_position_wins for r in rows) / decided
        rewards[name] = entry
    return {"settings": settings, "rewards": rewards}


def markdown(report: dict) -> str:
    """The report as a Markdown table: one row per reward, then one per reward and tag."""
    lines = [
        "| reward | tag | n | win rate / delta | 95% interval | baseline | candidate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["rewards"].items():
        for tag, f in [("all", entry), *entry["per_tag"].items()]:
            value = f["win_rate"] if entry["pairwise"] else f["delta"]
            base, cand = ("", "") if entry["pairwise"] else (f"{f['baseline_mean']:.4g}", f"{f['candidate_mean']:.4g}")
            interval = f"[{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]"
            lines.append(f"| {name} | {tag} | {f['n']} | {value:.3f} | {interval} | {base} | {cand} |")
    return "\n".join(lines) + "\n"


def pair_grid(baseline: MediaGroup, candidate: MediaGroup, verdicts: list[str]) -> np.ndarray:
    """Per sample, baseline | candidate side by side, the prompt above and the verdicts below. -> [H', W', 3]"""
    frames = lambda m: m if m.dim() == 4 else m[:, 0]  # noqa: E731  (videos: their first frames)
    base, cand = frames(baseline.media), frames(candidate.media)
    rows = [torch.cat([b, c], dim=1) for b, c in zip(base, cand, strict=True)]  # [H, 2W, 3] each
    height, width = rows[0].shape[0], rows[0].shape[1]
    font, strip = ImageFont.load_default(), 12
    image = Image.new("RGB", (max(width, 320), len(rows) * (height + 2 * strip)), "white")
    draw = ImageDraw.Draw(image)
    for k, row in enumerate(rows):
        top = k * (height + 2 * strip)
        draw.text((2, top), f"{candidate.prompt[:60]} (baseline | candidate)", fill="black", font=font)
        image.paste(Image.fromarray(row.numpy()), (0, top + strip))
        draw.text((2, top + strip + height), verdicts[k][:80], fill="black", font=font)
    return np.asarray(image)


def _verdicts(results: list[VersusStart], group_id: str, samples: int) -> list[str]:
    """Per sample, each pairwise reward's candidate win rate ("name 1.0") or pointwise change."""
    out = []
    for k in range(samples):
        parts = []
        for r in results:
            if r.group_id != group_id:
                continue
            if r.pairwise:
                parts.append(f"{r.reward} {r.candidate[''][k]:.2f}")
            else:
                parts.append(f"{r.reward} {r.reference[''][k]:.3g}->{r.candidate[''][k]:.3g}")
        out.append("; ".join(parts))
    return out


def eval_run(run_dir: Path, prompts_file: Path | None = None, out: Path | None = None) -> Path:
    """Compare RUN_DIR's final LoRA with its starting policy; -> the path of eval.json."""
    import ray

    from actors.rollout_worker import RolloutWorker
    from cluster.ray_cluster import RoleGroup, ray_session
    from reward_workers.reward_worker import RewardWorker

    cfg = _run_config(run_dir)
    groups, tags = _groups(cfg, prompts_file)
    out = out or run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    settings = eval_settings(cfg) | {"groups": [g.__dict__ | {"tag": tags[g.group_id]} for g in groups]}
    settings |= {"baseline": cfg.policy.model, "candidate": str(run_dir / "lora")}
    with ray_session(cfg.cluster, out):
        rollout = RoleGroup(cfg.cluster.rollout, name="eval-rollout").spawn(
            RolloutWorker,
            args=(cfg.policy, cfg.sampler),
            kwargs_per_rank=[{"run_seed": cfg.run.seed}] * cfg.cluster.rollout.num_workers,
        )
        reward = RoleGroup(cfg.cluster.reward, name="eval-reward").spawn(
            RewardWorker,
            args=(cfg.rewards,),
            kwargs_per_rank=[{"eval_specs": cfg.eval.rewards}] * cfg.cluster.reward.num_workers,
        )
        try:
            workers, judges = rollout.actors, reward.actors
            baseline = ray.get([workers[i % len(workers)].evaluate.remote(g) for i, g in enumerate(groups)])
            ray.get([w.load_lora.remote(str(run_dir / "lora")) for w in workers])
            candidate = ray.get([workers[i % len(workers)].evaluate.remote(g) for i, g in enumerate(groups)])
            n = len(judges)
            calls = [
                a.versus_start.remote(candidate[i::n], baseline[i::n]) for i, a in enumerate(judges) if i < len(groups)
            ]
            results = [r for part in ray.get(calls) for r in part]
        finally:
            rollout.shutdown()
            reward.shutdown()
    report = summarize(results, tags, settings)
    (out / "eval.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "eval.md").write_text(markdown(report), encoding="utf-8")
    for k, (b, c) in enumerate(zip(baseline, candidate, strict=True)):
        grid = pair_grid(b, c, _verdicts(results, c.group_id, c.media.shape[0]))
        Image.fromarray(grid).save(out / f"pairs_{k:03d}.png")
    return out / "eval.json"


def _run_config(run_dir: Path) -> Config:
    if not (run_dir / "config.yaml").is_file():
        raise EvalInputError(f"{run_dir} is not a run directory (no config.yaml)")
    if not (run_dir / "lora" / "pytorch_lora_weights.safetensors").is_file():
        raise EvalInputError(
            f"{run_dir}/lora/pytorch_lora_weights.safetensors is missing: `flexgrpo eval RUN_DIR` compares a "
            "finished LoRA run's final adapter with its starting policy"
        )
    return load_config(run_dir / "config.yaml")


def _groups(cfg: Config, prompts_file: Path | None) -> tuple[list[PromptGroup], dict[str, str | None]]:
    """The prompt groups (seed = index) and their tags: the run's held-out prompts, or those of a file."""
    if prompts_file is None:
        groups = eval_groups(cfg)
        return groups, {g.group_id: None for g in groups}
    prompts = read_prompt_file(prompts_file)
    if len(prompts) < 2:
        raise EvalInputError(f"{prompts_file} holds {len(prompts)} prompts: an interval over prompts needs 2")
    groups = [PromptGroup(f"eval-{i}", p, cfg.eval.samples_per_prompt, seed=i) for i, (p, _) in enumerate(prompts)]
    return groups, {g.group_id: tag for g, (_, tag) in zip(groups, prompts, strict=True)}

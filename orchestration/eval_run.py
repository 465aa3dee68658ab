"""`flexgrpo eval`: two policies compared offline on a prompt set, without training.

- `flexgrpo eval RUN_DIR`: a finished run's final weights (its `lora/`, or a full fine-tune's `transformer/`)
  against its starting policy, with the run's own settings
  (policy, ODE sampler steps, guidance, resolution, samples per prompt, seeds, evaluation scorers: `eval.rewards`
  or the training rewards) on the run's held-out prompts or on a prompt file.
- `flexgrpo eval --baseline MODEL [--baseline-lora DIR] --candidate MODEL [--candidate-lora DIR]`: any two
  policies, each a tiny model name, a diffusers folder or a hub id with an optional LoRA folder (as a run writes
  it, `lora/`); a run directory or one of its checkpoints stands for its model and its LoRA, a full fine-tune's run
  directory for its model and its exported `transformer/`. An exported transformer folder alone is the recipe's
  model (`policy.model`) with that transformer in place of its own. The sampler and
  evaluation settings are a recipe's (`--config`, default the candidate run's config, else configs/tiny.yaml).

Prompts come from a file (one prompt a line, or JSONL with `prompt` and an optional `tag`, GenEval's metadata
format). Sampling and judging go through a rollout and a reward pool of Ray actors, as in training, and the
figures are those of the in-loop evaluation (orchestration/evaluation.py), here per tag too. Writes into `--out`
(default `RUN_DIR/eval/`): `eval.json`, `eval.md` (a Markdown table) and `pairs_<k>.png` (baseline | candidate per
prompt, the verdicts below).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from flexgrpo.config import Config, ConfigError, LoraConfig, PolicyConfig, load_config, with_rewards
from flexgrpo.records import MediaGroup, PromptGroup, VersusStart
from orchestration.evaluation import eval_groups, eval_settings, mean_interval
from reward_workers.versus_start import CATEGORY_PREFIX

log = logging.getLogger("flexgrpo")
LORA_FILE = "pytorch_lora_weights.safetensors"  # the adapter, in the diffusers LoRA format a run writes
TRANSFORMER_DIR = "transformer"  # in a full fine-tune's run directory: its final transformer, as diffusers saves it


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


def _win_rate(rows: list[VersusStart], part: str) -> dict | None:
    """The candidate's win rate in `part` over the prompts with evidence for it; None: no prompt has any."""
    wins = torch.stack([r.candidate[part].nanmean() for r in rows if part in r.candidate])  # [P]
    wins = wins[~wins.isnan()]
    if not wins.numel():
        return None
    figures = _figures(wins, (0.0, 1.0))
    return {"win_rate": figures.pop("mean")} | figures


def summarize(results: list[VersusStart], tags: dict[str, str | None], settings: dict) -> dict:
    """eval.json: per reward, over prompts and per tag, the candidate's win rate against the baseline (pairwise;
    Flex also per category, `categories`) or the baseline and candidate means and their difference (pointwise),
    each with a 95% interval over prompts. `tags`: group id -> tag."""
    rewards: dict[str, dict] = {}
    for name in dict.fromkeys(r.reward for r in results):
        rows = [r for r in results if r.reward == name]
        subsets = {None: rows} | {
            t: [r for r in rows if tags[r.group_id] == t] for t in sorted(set(tags.values()) - {None})
        }
        entry: dict = {"pairwise": rows[0].pairwise, "per_tag": {}}
        for tag, subset in subsets.items():
            if rows[0].pairwise:
                figures = _win_rate(subset, "")
                categories = {
                    part.removeprefix(CATEGORY_PREFIX): _win_rate(subset, part)
                    for part in dict.fromkeys(p for r in subset for p in r.candidate)
                    if part.startswith(CATEGORY_PREFIX)
                }
                if categories := {k: v for k, v in categories.items() if v is not None}:
                    figures["categories"] = categories  # Flex: per category, under the judge's names
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
        for category, f in entry.get("categories", {}).items():
            interval = f"[{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]"
            lines.append(f"| {name} ({category}) | all | {f['n']} | {f['win_rate']:.3f} | {interval} |  |  |")
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


@dataclass(frozen=True)
class Side:
    """One policy of a comparison: what the rollout workers build (the model, and a transformer folder in place
    of its own), and the LoRA folder loaded into it."""

    policy: PolicyConfig
    lora: Path | None = None

    def describe(self) -> dict:
        policy, lora = self.policy, self.lora and str(self.lora)
        return {"family": policy.family, "model": policy.model, "transformer": policy.transformer, "lora": lora}


def eval_run(
    run_dir: Path,
    prompts_file: Path | None = None,
    out: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    rewards: list[dict] | None = None,
) -> Path:
    """Compare RUN_DIR's final weights with its starting policy; -> the path of eval.json."""
    return compare(*run_comparison(run_dir, overrides, rewards), prompts_file, out or run_dir / "eval")


def run_comparison(
    run_dir: Path, overrides: list[str] | tuple[str, ...] = (), rewards: list[dict] | None = None
) -> tuple[Config, Side, Side]:
    """What `flexgrpo eval RUN_DIR` compares: (the run's config, its starting policy, its final weights)."""
    cfg = _with_rewards(_run_config(run_dir, overrides), rewards)
    return cfg, Side(cfg.policy), _trained_side(cfg.policy, run_dir, run_dir)


def eval_policies(
    baseline: tuple[str, str | None],
    candidate: tuple[str, str | None],
    prompts_file: Path | None,
    out: Path,
    recipe: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    rewards: list[dict] | None = None,
) -> Path:
    """Compare two policies, each (MODEL, LORA folder or None); -> eval.json."""
    if prompts_file is None:
        raise EvalInputError("--prompts FILE is needed to compare two policies (only a RUN_DIR brings its own)")
    return compare(*policies_comparison(baseline, candidate, recipe, overrides, rewards), prompts_file, out)


def policies_comparison(
    baseline: tuple[str, str | None],
    candidate: tuple[str, str | None],
    recipe: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    rewards: list[dict] | None = None,
) -> tuple[Config, Side, Side]:
    """What `flexgrpo eval --baseline ... --candidate ...` compares: (a recipe's sampler and evaluation settings,
    by default the candidate run's config when the candidate is a run, else the tiny recipe; the two sides)."""
    run_dir = _run_of(Path(candidate[0]))
    if recipe is None and run_dir is not None:
        recipe = run_dir / "config.yaml"
    try:
        cfg = _with_rewards(load_config(recipe, overrides), rewards)
    except ConfigError as err:
        raise EvalInputError(f"config error: {err}") from None
    base, cand = _side(cfg, *baseline, "--baseline"), _side(cfg, *candidate, "--candidate")
    return replace(cfg, policy=base.policy), base, cand


def compare(cfg: Config, baseline: Side, candidate: Side, prompts_file: Path | None, out: Path) -> Path:
    """Sample the prompt groups with both policies (ODE, `cfg`'s sampler settings, seed = prompt index) and score
    the candidate against the baseline with the evaluation rewards; write the report. -> the path of eval.json"""
    import ray

    from cluster.ray_cluster import RoleGroup, ray_session
    from reward_workers.reward_worker import RewardWorker

    groups, tags = _groups(cfg, prompts_file)
    out.mkdir(parents=True, exist_ok=True)
    settings = eval_settings(cfg) | {"groups": [g.__dict__ | {"tag": tags[g.group_id]} for g in groups]}
    settings |= {"baseline": baseline.describe(), "candidate": candidate.describe()}
    with ray_session(cfg.cluster, out):
        baseline_media, candidate_media = _sample_both(cfg, baseline, candidate, groups)
        reward = RoleGroup(cfg.cluster.reward, name="eval-reward").spawn(
            RewardWorker,  # the evaluation scorers only, as this worker's (unused) training spec
            args=(cfg.eval.rewards or cfg.rewards,),
            kwargs_per_rank=[{}] * cfg.cluster.reward.num_workers,
        )
        try:
            judges = reward.actors
            n = len(judges)
            calls = [
                a.versus_start.remote(candidate_media[i::n], baseline_media[i::n])
                for i, a in enumerate(judges)
                if i < len(groups)
            ]
            results = [r for part in ray.get(calls) for r in part]
        finally:
            reward.shutdown()
    report = summarize(results, tags, settings)
    (out / "eval.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "eval.md").write_text(markdown(report), encoding="utf-8")
    for k, (b, c) in enumerate(zip(baseline_media, candidate_media, strict=True)):
        grid = pair_grid(b, c, _verdicts(results, c.group_id, c.media.shape[0]))
        Image.fromarray(grid).save(out / f"pairs_{k:03d}.png")
    return out / "eval.json"


def _sample_both(
    cfg: Config, baseline: Side, candidate: Side, groups: list[PromptGroup]
) -> tuple[list[MediaGroup], list[MediaGroup]]:
    """Both policies' samples of `groups`. A baseline without a LoRA on the candidate's base model is sampled on
    the candidate's pool before its LoRA is loaded (a new adapter leaves the model as it is); otherwise each side
    gets a pool of its own."""
    if baseline.lora is None and replace(baseline.policy, lora=candidate.policy.lora) == candidate.policy:
        with _rollout_pool(cfg, candidate.policy) as workers:
            return _sample(workers, None, groups), _sample(workers, candidate.lora, groups)
    with _rollout_pool(cfg, baseline.policy) as workers:
        baseline_media = _sample(workers, baseline.lora, groups)
    with _rollout_pool(cfg, candidate.policy) as workers:
        return baseline_media, _sample(workers, candidate.lora, groups)


@contextmanager
def _rollout_pool(cfg: Config, policy: PolicyConfig) -> Iterator[list]:
    from actors.rollout_worker import RolloutWorker
    from cluster.ray_cluster import RoleGroup

    pool = RoleGroup(cfg.cluster.rollout, name="eval-rollout").spawn(
        RolloutWorker,
        args=(policy, cfg.sampler),
        kwargs_per_rank=[{"run_seed": cfg.run.seed}] * cfg.cluster.rollout.num_workers,
    )
    try:
        yield pool.actors
    finally:
        pool.shutdown()


def _sample(workers: list, lora: Path | None, groups: list[PromptGroup]) -> list[MediaGroup]:
    """ODE samples of `groups` spread over `workers`, with `lora` loaded first (if any)."""
    import ray

    if lora is not None:
        ray.get([w.load_lora.remote(str(lora)) for w in workers])
    return ray.get([workers[i % len(workers)].evaluate.remote(g) for i, g in enumerate(groups)])


def _side(cfg: Config, model: str, lora: str | None, flag: str) -> Side:
    """One side from MODEL and an optional LoRA folder. MODEL may be a run directory or one of its checkpoints
    (the run's model with what it trained), or an exported transformer folder (`cfg`'s model with it)."""
    from actors.tiny_models import TINY_MODELS
    from flexgrpo.model_cache import check_model_reference

    run_dir = _run_of(Path(model))
    if run_dir is not None:
        if lora is not None:
            raise EvalInputError(f"{flag} {model} is a run's folder and brings its own weights: leave out {flag}-lora")
        run = load_config(run_dir / "config.yaml").policy
        policy = replace(cfg.policy, family=run.family, model=run.model, max_sequence_length=run.max_sequence_length)
        policy = replace(policy, distilled_guidance_scale=run.distilled_guidance_scale, transformer=run.transformer)
        return _trained_side(replace(policy, lora=run.lora), run_dir, Path(model))
    if _is_transformer_folder(Path(model)):
        policy = replace(cfg.policy, transformer=model)
    else:
        try:
            check_model_reference(flag, model, TINY_MODELS)
        except ConfigError as err:
            raise EvalInputError(str(err)) from None
        policy = replace(cfg.policy, model=model, transformer=None)
    if lora is None:
        return Side(replace(policy, lora=replace(policy.lora, enabled=False)))
    folder = _lora_folder(Path(lora), f"{flag}-lora {lora}")
    return Side(replace(policy, lora=_adapter_settings(folder, policy.lora)), folder)


def _trained_side(policy: PolicyConfig, run_dir: Path, folder: Path) -> Side:
    """What a run trained, as saved in `folder` (the run directory or one of its checkpoints) on top of the run's
    starting `policy`: its LoRA, or a full fine-tune's exported transformer (written at the end of a run only)."""
    if policy.lora.enabled:
        lora = _lora_folder(folder / "lora", f"{folder}/lora")
        return Side(replace(policy, lora=_adapter_settings(lora, policy.lora)), lora)
    if folder != run_dir:
        raise EvalInputError(
            f"{folder} is a checkpoint of a full fine-tune: it holds DeepSpeed state only; give the run directory "
            f"({run_dir}), whose {TRANSFORMER_DIR}/ the run writes when it ends"
        )
    if not _is_transformer_folder(run_dir / TRANSFORMER_DIR):
        raise EvalInputError(f"{run_dir} holds no {TRANSFORMER_DIR}/: a full fine-tune writes it when it ends")
    return Side(replace(policy, transformer=str(run_dir / TRANSFORMER_DIR)))


def _is_transformer_folder(folder: Path) -> bool:
    """A folder one diffusers model was saved to (config.json naming its class), not a whole pipeline."""
    config = folder / "config.json"
    return config.is_file() and not (folder / "model_index.json").is_file() and "_class_name" in config.read_text()


def _run_of(folder: Path) -> Path | None:
    """The run directory of a run directory (config.yaml) or of one of its checkpoints (run_state.json)."""
    if (folder / "config.yaml").is_file():
        return folder
    if (folder / "run_state.json").is_file() and (folder.parent.parent / "config.yaml").is_file():
        return folder.parent.parent
    return None


def _lora_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise EvalInputError(f"{what} is not a folder")
    if not (folder / LORA_FILE).is_file():
        raise EvalInputError(
            f"{what} holds no LoRA adapter ({LORA_FILE}): give the `lora/` folder a run writes (a full fine-tune's "
            "exported transformer is a MODEL folder)"
        )
    return folder


def _adapter_settings(folder: Path, default: LoraConfig) -> LoraConfig:
    """The adapter's rank, alpha and target modules from the metadata diffusers saves with it (else `default`)."""
    from safetensors import safe_open

    with safe_open(str(folder / LORA_FILE), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    if "transformer.r" not in meta:
        return replace(default, enabled=True)
    targets = meta.get("transformer.target_modules", default.target_modules)
    return LoraConfig(
        enabled=True, rank=meta["transformer.r"], alpha=meta["transformer.lora_alpha"], target_modules=sorted(targets)
    )


def _with_rewards(cfg: Config, rewards: list[dict] | None) -> Config:
    """`cfg` with `rewards` (reward specs as dicts, from --rewards) as its evaluation rewards."""
    if rewards is None:
        return cfg
    try:
        return replace(cfg, eval=replace(cfg.eval, rewards=with_rewards(cfg, rewards)))
    except ConfigError as err:
        raise EvalInputError(f"--rewards: {err}") from None


def _run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    if not (run_dir / "config.yaml").is_file():
        raise EvalInputError(f"{run_dir} is not a run directory (no config.yaml)")
    return load_config(run_dir / "config.yaml", overrides)


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

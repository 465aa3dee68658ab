"""Evaluation against the starting policy: did alignment work?

A pairwise judge has no absolute scale (a group's mean win rate is 0.5 whatever the policy does), so each
evaluation compares its samples with fixed ones: the starting policy's ODE samples of the same held-out prompts
and seeds, made once at step 0 and kept in `RUN/eval_reference/` (safetensors, a PNG grid and a JSON of the
prompts, seeds and sampler settings), so every evaluation of a run, across resumes, measures against the same
reference. Per evaluation reward (`eval.rewards`, default the training rewards):

  pairwise   `<name>/win_rate_vs_start` with a 95% interval over prompts (`_lo`, `_hi`), per component (Flex:
             `<name>/category/win_rate_vs_start`, the weighted category mean, and per category under the judge's
             own name, `<name>/category/A. Semantic Alignment & Accuracy/win_rate_vs_start`), and
             `<name>/first_position_rate` of the decided judgements
  pointwise  `<name>/mean` of the samples and `<name>/delta_vs_start` (mean over prompts of the change against the
             start samples) with its interval

The alarm: the training signal rises when a training reward scored here has its interval above no change (win
rate lo > 0.5, delta lo > 0); then an independent scorer (an evaluation reward that is not a training reward) whose
interval lies below no change gets `alarm/<name>` 1 and a warning line (the usual sign of reward hacking).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from flexgrpo.config import Config, PromptsConfig
from flexgrpo.prompts import load_prompts
from flexgrpo.records import MediaGroup, PromptGroup, VersusStart
from orchestration.reporting import caption_rows, media_grid

log = logging.getLogger("flexgrpo")

REFERENCE_DIR = "eval_reference"  # in the run directory: the starting policy's evaluation samples
# Student t quantiles t_{0.975, df} for df = 1..30 (beyond: the Cornish-Fisher expansion around 1.96)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
T_975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# ---- the math (pure functions over tensors) -------------------------------------------------------------


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: torch.Tensor, bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """Mean of per-prompt values [P] and its 95% t interval (clamped to `bounds`). P >= 2."""
    n = values.numel()
    mean = values.mean().item()
    half = t_quantile_975(n - 1) * values.std().item() / math.sqrt(n) if n > 1 else math.inf
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return mean, lo, hi


def _key(name: str, part: str, figure: str) -> str:
    return f"{name}/{part}/{figure}" if part else f"{name}/{figure}"


def versus_start_metrics(results: list[VersusStart]) -> dict[str, float]:
    """The figures of one evaluation (keys without the `eval/` prefix), from every scorer's per-prompt results."""
    by_reward: dict[str, list[VersusStart]] = {}
    for r in results:
        by_reward.setdefault(r.reward, []).append(r)
    metrics: dict[str, float] = {}
    for name, rows in by_reward.items():
        for part in dict.fromkeys(p for r in rows for p in r.candidate):  # Flex: a category some replies named
            if rows[0].pairwise:
                per_prompt = torch.stack([r.candidate[part].nanmean() for r in rows if part in r.candidate])  # [P]
                per_prompt = per_prompt[~per_prompt.isnan()]  # a prompt with no evidence for this part
                if per_prompt.numel():
                    figure = _key(name, part, "win_rate_vs_start")
                    mean, lo, hi = mean_interval(per_prompt, bounds=(0.0, 1.0))
                    metrics |= {figure: mean, f"{figure}_lo": lo, f"{figure}_hi": hi}
            else:
                metrics[_key(name, part, "mean")] = torch.cat([r.candidate[part] for r in rows]).mean().item()
                deltas = torch.stack([(r.candidate[part] - r.reference[part]).mean() for r in rows])  # [P]
                figure = _key(name, part, "delta_vs_start")
                mean, lo, hi = mean_interval(deltas)
                metrics |= {figure: mean, f"{figure}_lo": lo, f"{figure}_hi": hi}
        decided = sum(r.position_decided for r in rows)
        if rows[0].pairwise and decided:
            metrics[f"{name}/first_position_rate"] = sum(r.first_position_wins for r in rows) / decided
        if any(r.requests for r in rows):
            metrics[f"{name}/unparsed"] = float(sum(r.unparsed for r in rows))
    return metrics


def moved(metrics: dict[str, float], name: str) -> int:
    """+1: reward `name`'s interval lies above no change against the start; -1: below; 0: neither or unknown."""
    for figure, none in (("win_rate_vs_start", 0.5), ("delta_vs_start", 0.0)):
        if f"{name}/{figure}_lo" in metrics:
            return 1 if metrics[f"{name}/{figure}_lo"] > none else -1 if metrics[f"{name}/{figure}_hi"] < none else 0
    return 0


def hacking_alarms(metrics: dict[str, float], training: list[str], scorers: list[str]) -> dict[str, float]:
    """`alarm/<name>` for every independent scorer (in `scorers`, not in `training`): 1.0 when a training reward
    rises against the start while this scorer falls, each beyond its interval; else 0.0."""
    rises = any(moved(metrics, name) > 0 for name in training)
    return {f"alarm/{name}": float(rises and moved(metrics, name) < 0) for name in scorers if name not in training}


# ---- the starting policy's samples ---------------------------------------------------------------------


def eval_groups(cfg: Config) -> list[PromptGroup]:
    """The held-out prompt groups: the first `eval.num_prompts` prompts, seed = index."""
    prompts = load_prompts(PromptsConfig(file=cfg.eval.prompts_file))[: cfg.eval.num_prompts]
    return [PromptGroup(f"eval-{i}", p, cfg.eval.samples_per_prompt, seed=i) for i, p in enumerate(prompts)]


def eval_settings(cfg: Config) -> dict:
    """What fixes the evaluation samples: prompts, seeds and sampler settings (written into every result)."""
    s, p = cfg.sampler, cfg.policy
    return {
        "groups": [asdict(g) for g in eval_groups(cfg)],
        "run_seed": cfg.run.seed,
        "sampler": {"kind": "ode", "num_steps": s.eval_num_steps, "guidance_scale": s.guidance_scale},
        "policy": {"family": p.family, "model": p.model, "height": p.height, "width": p.width},
        "num_frames": p.num_frames,
    }


def save_reference(folder: Path, settings: dict, groups: list[MediaGroup]) -> None:
    """The starting samples as safetensors (group id -> uint8 media), a captioned PNG grid, and the settings."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({g.group_id: g.media.contiguous() for g in groups}, str(folder / "samples.safetensors"))
    grid = media_grid([g.media for g in groups])
    grid = grid[0] if grid.ndim == 4 else grid
    height = groups[0].media.shape[-3]
    Image.fromarray(np.ascontiguousarray(caption_rows(grid, [g.prompt for g in groups], height))).save(
        folder / "samples.png"
    )
    (folder / "reference.json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def load_reference(folder: Path, settings: dict) -> list[MediaGroup] | None:
    """The stored starting samples (None: none stored). Raises when they were made with other settings."""
    if not (folder / "reference.json").is_file():
        return None
    from safetensors.torch import load_file

    stored = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    if stored != settings:
        changed = sorted(k for k in settings.keys() | stored.keys() if settings.get(k) != stored.get(k))
        raise RuntimeError(
            f"the starting policy's evaluation samples in {folder} were made with other eval settings ({changed}): "
            "restore those settings, or evaluate in a new run"
        )
    media = load_file(str(folder / "samples.safetensors"))
    return [MediaGroup(g["group_id"], g["prompt"], 0, media[g["group_id"]]) for g in settings["groups"]]


# ---- one evaluation over the pools ----------------------------------------------------------------------


class Evaluation:
    """The run's evaluation: samples on the rollout pool, scores against the start on the reward pool."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg, self.folder = cfg, run_dir / REFERENCE_DIR
        self.groups = eval_groups(cfg)
        self.settings = eval_settings(cfg)
        self.reference: list[MediaGroup] | None = None
        self.scorers = [s.name for s in cfg.eval.rewards]  # empty: the training rewards at each evaluation

    @property
    def prompts(self) -> list[str]:
        return [g.prompt for g in self.groups]

    def sample(self, rollout: list, version: int, ema: bool) -> list[MediaGroup]:
        """ODE samples of the held-out groups at `version` (>=), spread over the rollout actors."""
        refs = [rollout[i % len(rollout)].evaluate.remote(g, version, ema) for i, g in enumerate(self.groups)]
        return ray.get(refs)

    def prepare(self, rollout: list, step: int) -> list[MediaGroup] | None:
        """Load the stored starting samples, or at step 0 make and store them. -> the samples made now, if any."""
        self.reference = load_reference(self.folder, self.settings)
        if self.reference is not None:
            log.info("evaluation: starting-policy samples from %s", self.folder)
            return None
        if step > 0:
            log.warning(
                "evaluation: no starting-policy samples in %s (evaluation was off at step 0): "
                "no figures against the start in this run",
                self.folder,
            )
            return None
        self.reference = self.sample(rollout, version=0, ema=False)
        save_reference(self.folder, self.settings, self.reference)
        log.info("evaluation: starting-policy samples stored in %s", self.folder)
        return self.reference

    def score(self, reward: list, samples: list[MediaGroup], training: list[str]) -> dict[str, float]:
        """Every evaluation scorer against the start (groups spread over the reward actors); the alarms. Keys
        without the `eval/` prefix."""
        if self.reference is None:
            return {}
        n = len(reward)
        refs = [
            actor.versus_start.remote(samples[i::n], self.reference[i::n])
            for i, actor in enumerate(reward)
            if samples[i::n]
        ]
        results = [r for part in ray.get(refs) for r in part]
        metrics = versus_start_metrics(results)
        alarms = hacking_alarms(metrics, training, self.scorers or training)
        for name in (k.removeprefix("alarm/") for k, v in alarms.items() if v):
            log.warning(
                "evaluation: %s falls against the start while the training reward rises: a sign of reward hacking",
                name,
            )
        return metrics | alarms


def last_win_rates(rows: list[dict]) -> dict[str, tuple[float, float, float]]:
    """From a run's metrics rows, each pairwise reward's last `eval/` win rate against the start: (rate, lo, hi)."""
    last: dict[str, tuple[float, float, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("eval/") and key.endswith("/win_rate_vs_start"):
                name = key.removeprefix("eval/").removesuffix("/win_rate_vs_start")
                last[name] = (value, row.get(f"{key}_lo", value), row.get(f"{key}_hi", value))
    return last

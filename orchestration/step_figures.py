"""A learner step's figures from its scored groups, and the line a person reads for each step."""

from __future__ import annotations

import torch

from flexgrpo.records import ScoredGroup


def reward_figures(scored: list[ScoredGroup]) -> dict[str, float]:
    """Reward mean and spread, each reward component's mean, the judges' parse rate and first-position win rate
    (pairwise judges: the share of decided judgements that went to the sample shown first)."""
    rewards = torch.cat([s.rewards for s in scored])
    requests = sum(s.requests for s in scored)
    figures = {
        "reward_mean": rewards.mean().item(),
        "reward/std": rewards.std().item(),
        "reward/version": float(max(s.reward_version for s in scored)),
        "reward/unparsed": float(sum(s.unparsed for s in scored)),
        "reward/requests": float(requests),
        "reward/parse_rate": 1.0 - sum(s.unparsed for s in scored) / max(1, requests),
        "rollout/samples": float(rewards.numel()),
    }
    decided = sum(s.position_decided for s in scored)
    if decided:
        figures["reward/first_position_win_rate"] = sum(s.first_position_wins for s in scored) / decided
    for name in scored[0].components:
        figures[f"reward/{name}"] = (
            torch.cat([s.components[name] for s in scored if name in s.components]).mean().item()
        )
    return figures


def step_line(step: int, num_steps: int, metrics: dict[str, float]) -> str:
    """The log line of step `step` (0-based): reward, the loss's health, staleness, where the time went and how
    busy the pools were; a pool short of workers says so (live/wanted)."""
    line = (
        f"step {step + 1}/{num_steps}  reward {metrics['reward_mean']:.4f}  ratio {metrics['loss/ratio_mean']:.6f}  "
        f"clip {metrics['loss/clip_frac']:.3f}  is_w {metrics['offpolicy/is_weight_mean']:.3f}  "
        f"stale {metrics['offpolicy/staleness_max']:.0f}  grad {metrics['loss/grad_norm']:.3g}  "
        f"groups {metrics['timing/groups']:.1f}s train {metrics['timing/train']:.1f}s"
    )
    for pool in ("rollout", "reward"):
        line += f"  {pool} {metrics[f'{pool}/groups_per_s']:.2f} g/s (idle {100 * metrics[f'{pool}/idle_frac']:.0f}%)"
        live, wanted = metrics.get(f"{pool}/workers_live", 0), metrics.get(f"{pool}/workers_wanted", 0)
        if live < wanted:
            line += f" {live:.0f}/{wanted:.0f} workers"
    return line

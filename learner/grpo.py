"""The GRPO math: group-relative advantages and the clipped policy loss with a KL to the reference.

Pure functions over tensors; shapes in the comments (B = samples in a micro-batch, G = samples of a group).
"""

from __future__ import annotations

import torch
from torch import Tensor

STD_EPS = 1e-4  # added to the reward std before dividing


def group_advantages(
    rewards: list[Tensor],
    reward_versions: list[int],
    *,
    global_std: bool,
    clip: float,
    prompts: list[str] | None = None,
) -> list[Tensor]:
    """Per-prompt advantages (r - mean_prompt) / (std + 1e-4), clamped to +-clip.

    rewards: one [G] tensor per group. Groups of the same prompt (and reward version) in this step are pooled
    for the mean and std; `prompts=None` treats every group as its own prompt. With `global_std` the std is
    taken over all groups of the same reward version instead. Groups scored by different reward specs are
    never normalised together. A prompt whose rewards are all equal carries no signal: zero advantages.
    """
    keys = list(zip(prompts or range(len(rewards)), reward_versions, strict=True))  # (prompt, version) per group
    by_prompt: dict[tuple, list[Tensor]] = {}
    by_version: dict[int, list[Tensor]] = {}
    for r, key in zip(rewards, keys, strict=True):
        by_prompt.setdefault(key, []).append(r)
        by_version.setdefault(key[1], []).append(r)

    out = []
    for r, key in zip(rewards, keys, strict=True):
        same_prompt = torch.cat(by_prompt[key])  # [n * G] this prompt's samples in this step
        if torch.all(same_prompt == same_prompt[0]):
            out.append(torch.zeros_like(r))
            continue
        std = (torch.cat(by_version[key[1]]) if global_std else same_prompt).std(unbiased=False)
        out.append(torch.clamp((r - same_prompt.mean()) / (std + STD_EPS), -clip, clip))  # [G]
    return out


def weighted_advantages(
    components: list[dict[str, Tensor]],
    weights: list[dict[str, float]],
    reward_versions: list[int],
    *,
    global_std: bool,
    clip: float,
    prompts: list[str] | None = None,
) -> list[Tensor]:
    """Pref-GRPO style multi-reward: normalise each reward into advantages on its own, then weight and sum.

    components: per group, reward name -> [G] rewards; weights: per group, reward name -> weight (those of the
    reward spec that scored the group).
    """
    total = [torch.zeros_like(next(iter(c.values()))) for c in components]
    for name in sorted({n for w in weights for n in w}):
        scored_by = [i for i, w in enumerate(weights) if name in w]
        per_reward = group_advantages(
            [components[i][name] for i in scored_by],
            [reward_versions[i] for i in scored_by],
            global_std=global_std,
            clip=clip,
            prompts=None if prompts is None else [prompts[i] for i in scored_by],
        )
        for i, adv in zip(scored_by, per_reward, strict=True):
            total[i] = total[i] + weights[i][name] * adv
    return total


def clipped_policy_loss(
    *, log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate on the per-step log-probs. All inputs [B]. -> (scalar loss, stats)"""
    log_ratio = log_prob - old_log_prob  # [B]
    ratio = torch.exp(log_ratio)  # [B]
    pg_loss1 = -advantages * ratio  # [B]
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)  # [B]
    policy_loss = torch.max(pg_loss1, pg_loss2).mean()  # []
    stats = {
        "ratio_mean": ratio.detach().mean(),
        "ratio_max_dev": (ratio.detach() - 1).abs().max(),
        "clip_frac": ((ratio.detach() - 1).abs() > clip_range).float().mean(),
        "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean(),
    }
    return policy_loss, stats


def kl_to_reference(*, mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """KL between the step Gaussians of the policy and the reference (same std), averaged over dims.

    mean, ref_mean [B, *latent]; std [B, 1, ...] -> [B]
    """
    sq = (mean - ref_mean) ** 2  # [B, *latent]
    return sq.mean(dim=tuple(range(1, sq.dim()))) / (2 * std.flatten() ** 2)  # [B]

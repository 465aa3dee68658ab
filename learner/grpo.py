"""The GRPO math: group-relative advantages, the decoupled PPO loss with a KL to the reference.

Pure functions over tensors; shapes in the comments (B = samples in a micro-batch, G = samples of a group).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flexgrpo.config import GRPOConfig
from flexgrpo.records import ScoredGroup

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
    return _weighted_sum(
        components,
        weights,
        lambda name, scored_by: _advantages_of(
            components, reward_versions, prompts, name, scored_by, global_std=global_std, clip=clip
        ),
    )


def _advantages_of(
    components: list[dict[str, Tensor]],
    reward_versions: list[int],
    prompts: list[str] | None,
    name: str,
    scored_by: list[int],
    *,
    global_std: bool,
    clip: float,
) -> list[Tensor]:
    """`group_advantages` of component `name` over the groups `scored_by`. -> [G] per group of `scored_by`"""
    return group_advantages(
        [components[i][name] for i in scored_by],
        [reward_versions[i] for i in scored_by],
        global_std=global_std,
        clip=clip,
        prompts=None if prompts is None else [prompts[i] for i in scored_by],
    )


def _weighted_sum(
    components: list[dict[str, Tensor]],
    weights: list[dict[str, float]],
    advantages_of: Callable[[str, list[int]], list[Tensor]],
) -> list[Tensor]:
    """Per group, the sum over the reward names of its spec of weight * `advantages_of(name, groups scored by
    that name)`. -> [G] per group"""
    total = [torch.zeros_like(next(iter(c.values()))) for c in components]  # [G] per group
    for name in sorted({n for w in weights for n in w}):
        scored_by = [i for i, w in enumerate(weights) if name in w]
        for i, adv in zip(scored_by, advantages_of(name, scored_by), strict=True):
            total[i] = total[i] + weights[i][name] * adv  # [G]
    return total


def decoupled_policy_loss(
    *,
    log_prob: Tensor,
    prox_log_prob: Tensor,
    behaviour_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
    is_cap: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Decoupled PPO (AReaL) for stale groups. All inputs [B]. -> (scalar loss, stats)

    The ratio is taken and clipped against the proximal policy (the weights before this update), and each term
    is weighted by the behaviour importance weight pi_prox / pi_behav of the policy that sampled it, truncated at
    `is_cap`. When the behaviour policy is the proximal one (staleness 0) the weight is 1 and this is the PPO
    clip objective of `clipped_policy_loss` exactly, in value and in gradient.
    """
    log_ratio = log_prob - prox_log_prob.detach()  # [B] current vs proximal
    ratio = torch.exp(log_ratio)  # [B]
    behaviour_log_ratio = (prox_log_prob - behaviour_log_prob).detach()  # [B] log pi_prox / pi_behav
    is_weight = torch.exp(behaviour_log_ratio).clamp(max=is_cap)  # [B]
    pg_loss1 = -advantages * ratio  # [B]
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)  # [B]
    policy_loss = (is_weight * torch.max(pg_loss1, pg_loss2)).mean()  # []
    behaviour_ratio = torch.exp((log_prob - behaviour_log_prob).detach())  # [B] pi_theta / pi_behav
    stats = {
        "ratio_mean": behaviour_ratio.mean(),
        "ratio_max_dev": (behaviour_ratio - 1).abs().max(),
        "clip_frac": ((ratio.detach() - 1).abs() > clip_range).float().mean(),
        "behaviour_clip_frac": ((behaviour_ratio - 1).abs() > clip_range).float().mean(),
        "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean(),
        "is_weight_mean": is_weight.mean(),
        "is_weight_max": is_weight.max(),
        "is_truncated_frac": (torch.exp(behaviour_log_ratio) > is_cap).float().mean(),
        "kl_behaviour_prox": (-behaviour_log_ratio).mean(),  # sample estimate of KL(behaviour || proximal)
    }
    return policy_loss, stats


def staleness_histogram(staleness: list[int]) -> dict[str, float]:
    """Per-step staleness metrics: groups trained k versions after the policy that sampled them."""
    counts = {f"offpolicy/staleness_{k}": float(staleness.count(k)) for k in sorted(set(staleness))}
    return counts | {"offpolicy/staleness_max": float(max(staleness))}


def step_advantages(scores: list[ScoredGroup], cfg: GRPOConfig) -> list[Tensor]:
    """Advantages of every group of a learner step, from the whole step's scores. -> [G] per group"""
    versions = [s.reward_version for s in scores]
    norm = {"global_std": cfg.global_std, "clip": cfg.adv_clip, "prompts": [s.prompt for s in scores]}
    if cfg.reward_combine == "sum":
        return group_advantages([s.rewards for s in scores], versions, **norm)
    mix = weighted_advantages if cfg.reward_combine == "advantage" else gdpo_advantages
    return mix([s.components for s in scores], [s.weights for s in scores], versions, **norm)


def kl_to_reference(*, mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """KL between the step Gaussians of the policy and the reference (same std), averaged over dims.

    mean, ref_mean [B, *latent]; std [B, 1, ...] -> [B]
    """
    sq = (mean - ref_mean) ** 2  # [B, *latent]
    return sq.mean(dim=tuple(range(1, sq.dim()))) / (2 * std.flatten() ** 2)  # [B]


GDPO_OVERALL_WEIGHT = 0.3  # Pref-GRPO OVERALL_WEIGHT: the overall win rate's share of a Flex advantage
GDPO_CATEGORY_WEIGHT = 0.7  # Pref-GRPO DIM_WEIGHT: the category mean's share


def gdpo_advantages(
    components: list[dict[str, Tensor]],
    weights: list[dict[str, float]],
    reward_versions: list[int],
    *,
    global_std: bool,
    clip: float,
    prompts: list[str] | None = None,
) -> list[Tensor]:
    """Pref-GRPO's advantage-level mixing (GDPO; `fastvideo/rewards/dispatcher.py`, compute_weighted_advantages
    with apply_gdpo). -> [G] advantages per group.

    components: per group, name -> [G] float32, as in `ScoredGroup.components`; weights: per group, reward name
    -> weight (`ScoredGroup.weights`). It reads, for each reward name R in `weights`:
    - R itself, normalised per prompt like `group_advantages` (unclipped), for a reward without parts;
    - for a pairwise judge with categories (UnifiedReward-Flex) that gives "R/overall", "R/category" and
      "R/category_mask": each of the two win rates normalised per prompt on its own, then blended
      A_R = 0.3 A_overall + 0.7 A_category where "R/category_mask" is 1, else A_overall.
    The rewards' advantages are summed with their weights (e.g. Flex 0.7 + CLIP 0.3), and the sum is normalised
    once more over the step's groups of the same reward version, (A - mean) / (std + 1e-4) with the unbiased std
    (the authors' gather-and-normalise), then clamped to +-clip. A version whose sums are all equal gets zeros.
    """

    def normalised(scored_by: list[int], name: str) -> list[Tensor]:  # per prompt, not clipped yet
        return _advantages_of(
            components, reward_versions, prompts, name, scored_by, global_std=global_std, clip=float("inf")
        )

    def reward_advantages(name: str, scored_by: list[int]) -> list[Tensor]:
        parts = (f"{name}/overall", f"{name}/category", f"{name}/category_mask")
        if not all(p in components[i] for p in parts for i in scored_by):
            return normalised(scored_by, name)
        overall, category = normalised(scored_by, parts[0]), normalised(scored_by, parts[1])
        return [
            torch.where(
                components[i][parts[2]] > 0,
                GDPO_OVERALL_WEIGHT * a_overall + GDPO_CATEGORY_WEIGHT * a_category,
                a_overall,
            )  # [G]
            for i, a_overall, a_category in zip(scored_by, overall, category, strict=True)
        ]

    total = _weighted_sum(components, weights, reward_advantages)  # [G] per group
    out = []
    for total_i, version in zip(total, reward_versions, strict=True):
        step = torch.cat([t for t, v in zip(total, reward_versions, strict=True) if v == version])  # [n * G]
        if torch.all(step == step[0]):
            out.append(torch.zeros_like(total_i))
            continue
        out.append(torch.clamp((total_i - step.mean()) / (step.std() + STD_EPS), -clip, clip))  # [G]
    return out

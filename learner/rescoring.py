"""Re-scoring recorded transitions: step k of each sample is run again under some weights (the trained policy,
its reference, the weights before a step's first update), and the sampler's Gaussian log-density of the next
latent the rollout worker recorded is the transition's log-prob under those weights. Pure functions of the
policy, the sampler step and the trajectories; the learner calls them for the loss, the proximal log-probs and
the KL."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from actors.policies.base import batch_embeddings, guided_velocity
from flexgrpo.records import PromptEmbedding, TrajectoryGroup

Sample = tuple[int, int]  # (index of the group in the list, index of the sample in the group)


def rescore(policy, step_fn: Callable, model, groups: list[TrajectoryGroup], chunk: list[Sample], k: int, device):
    """Re-run step k of the samples in `chunk` under `model` (the policy's transformer or a stand-in for it),
    scoring the recorded next latents. -> (the sampler step's result, the behaviour log-probs [B] recorded while
    sampling)"""
    x = torch.stack([groups[g].latents[i, k] for g, i in chunk]).to(device)  # [B, *latent]
    x_next = torch.stack([groups[g].next_latents[i, k] for g, i in chunk]).to(device)  # [B, *latent]
    sigma = torch.stack([groups[g].sigmas[i, k] for g, i in chunk]).to(device)  # [B]
    next_sigma = torch.stack([groups[g].next_sigmas[i, k] for g, i in chunk]).to(device)  # [B]
    cond = batch_embeddings([groups[g].cond for g, _ in chunk])
    uncond = _batch_optional([groups[g].uncond for g, _ in chunk])
    first = groups[chunk[0][0]]
    v = guided_velocity(policy, model, x, sigma, cond, uncond, first.guidance_scale)
    out = step_fn(
        x, v, sigma, next_sigma, noise_level=first.noise_level, sigma_1=first.schedule_sigma_1, next_latents=x_next
    )
    behaviour = torch.stack([groups[g].log_probs[i, k] for g, i in chunk]).to(device)  # [B]
    return out, behaviour


@torch.no_grad()
def transition_log_probs(policy, step_fn: Callable, model, group: TrajectoryGroup, micro_batch: int, device) -> Tensor:
    """Log-probs of every recorded transition of `group` under `model`, `micro_batch` samples at a time.
    -> [G, K] on the CPU"""
    samples = [(0, i) for i in range(group.group_size)]
    rows = []
    for start in range(0, len(samples), micro_batch):
        chunk = samples[start : start + micro_batch]
        steps = [
            rescore(policy, step_fn, model, [group], chunk, k, device)[0].log_prob
            for k in range(group.log_probs.shape[1])
        ]
        rows.append(torch.stack(steps, dim=1))
    return torch.cat(rows).cpu()


def _batch_optional(embeddings: list[PromptEmbedding | None]) -> PromptEmbedding | None:
    return None if embeddings[0] is None else batch_embeddings(embeddings)  # type: ignore[arg-type]

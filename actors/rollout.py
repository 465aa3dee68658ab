"""Sampling one prompt group with per-step log-probs: the rollout side of GRPO, as a pipeline-style recipe."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from actors.policies.base import DiffusionPolicy, batch_embeddings, guided_velocity
from actors.samplers import StepFn, StepResult, get_sampler, ode_step
from flexgrpo.config import SamplerConfig
from flexgrpo.records import MediaGroup, PromptEmbedding, PromptGroup, TrajectoryGroup


def sample_seed(run_seed: int, group_seed: int, index: int) -> int:
    """Noise seed of one sample: distinct across samples, groups and workers, reproducible from the three."""
    return int(np.random.SeedSequence([run_seed, group_seed, index]).generate_state(1, np.uint64)[0] >> 1)


def choose_trained_steps(cfg: SamplerConfig, group_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Which steps each sample trains on, and which steps draw SDE noise at all.

    -> trained [G, K] long step indices (sorted), stochastic [T] bool (False: an ODE step).
    fraction: the first K steps; random: a random K-subset per sample; window: Flow-GRPO-Fast, a window of
    `window_size` consecutive SDE steps starting in the first half, ODE elsewhere, only the window trained.
    """
    steps = cfg.num_steps
    if cfg.train_timesteps == "window":
        start = int(torch.randint(0, steps // 2 - cfg.window_size + 1, (1,), generator=generator))
        window = torch.arange(start, start + cfg.window_size)
        stochastic = torch.zeros(steps, dtype=torch.bool)
        stochastic[window] = True
        return window.expand(group_size, -1).clone(), stochastic
    k = max(1, math.ceil(cfg.timestep_fraction * steps))
    if cfg.train_timesteps == "fraction":
        trained = torch.arange(k).expand(group_size, -1).clone()
    else:
        trained = torch.stack([torch.randperm(steps, generator=generator)[:k].sort().values for _ in range(group_size)])
    return trained, torch.ones(steps, dtype=torch.bool)


@dataclass(frozen=True)
class _Conditioning:
    cond: PromptEmbedding  # the prompt's conditioning
    uncond: PromptEmbedding | None  # the empty prompt's, with CFG
    cond_batch: PromptEmbedding  # cond repeated G times: tokens [G, L, D]
    uncond_batch: PromptEmbedding | None  # uncond repeated G times


def _encode(policy: DiffusionPolicy, prompt: str, group_size: int, guidance_scale: float) -> _Conditioning:
    """The prompt's conditioning (and the empty prompt's for CFG), batched over the group."""
    use_cfg = guidance_scale > 1.0
    embeddings = policy.encode_prompts([prompt, ""] if use_cfg else [prompt])
    cond, uncond = embeddings[0], (embeddings[1] if use_cfg else None)
    uncond_batch = batch_embeddings([uncond] * group_size) if uncond is not None else None
    return _Conditioning(cond, uncond, batch_embeddings([cond] * group_size), uncond_batch)


def _denoise(
    policy: DiffusionPolicy,
    x: Tensor,
    sigmas: Tensor,
    text: _Conditioning,
    guidance_scale: float,
    step_fns: list[StepFn],
    *,
    noise_level: float,
    generators: list[torch.Generator] | None,
) -> Iterator[tuple[int, Tensor, StepResult]]:
    """Run the steps, yielding (j, x before step j, its result). generators: per-sample noise, drawn at every
    step; None runs deterministic steps only (no noise drawn)."""
    G, shape, device = x.shape[0], tuple(x.shape[1:]), x.device
    for j, step_fn in enumerate(step_fns):
        sigma = sigmas[j].expand(G).to(device)  # [G]
        next_sigma = sigmas[j + 1].expand(G).to(device)  # [G]
        v = guided_velocity(
            policy, policy.transformer, x, sigma, text.cond_batch, text.uncond_batch, guidance_scale
        )  # [G, *latent]
        noise = None
        if generators is not None:
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)  # [G, *lat]
        out = step_fn(x, v, sigma, next_sigma, noise_level=noise_level, sigma_1=float(sigmas[1]), noise=noise)
        yield j, x, out
        x = out.next_latents.to(x.dtype)


def _initial_noise(policy: DiffusionPolicy, generators: list[torch.Generator]) -> Tensor:
    """One standard normal latent per sample, each from its own generator. -> [G, *latent] float32"""
    device = next(policy.transformer.parameters()).device
    return torch.stack([torch.randn(policy.latent_shape(), generator=g) for g in generators]).to(device)


@torch.no_grad()
def sample_group(
    policy: DiffusionPolicy,
    group: PromptGroup,
    cfg: SamplerConfig,
    *,
    run_seed: int,
    policy_version: int,
) -> tuple[TrajectoryGroup, MediaGroup]:
    """Draw the G samples of `group` with the configured sampler, recording the trained transitions."""
    G = group.group_size
    seeds = [sample_seed(run_seed, group.seed, i) for i in range(G)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]

    # 1. encode the prompt (and the empty prompt for CFG)
    text = _encode(policy, group.prompt, G, cfg.guidance_scale)

    # 2. initial noise, one generator per sample
    x = _initial_noise(policy, generators)  # [G, *latent]

    # 3. timesteps and which of them are trained
    sigmas = policy.schedule(cfg.num_steps)  # [T + 1]
    trained, stochastic = choose_trained_steps(cfg, G, torch.Generator().manual_seed(seeds[0]))
    step_fn = get_sampler(cfg.kind)
    step_fns = [step_fn if stochastic[j] else ode_step for j in range(cfg.num_steps)]
    recorded_x, recorded_next, recorded_logp = [], [], []

    # 4. denoise, keeping x, x' and the log-prob at every step some sample trains on (on the device: one copy
    #    to the host at the end, no synchronising copy inside the loop)
    steps = _denoise(
        policy,
        x,
        sigmas,
        text,
        cfg.guidance_scale,
        step_fns,
        noise_level=cfg.noise_level,
        generators=generators,
    )
    for j, x_j, out in steps:
        if (trained == j).any():
            recorded_x.append(x_j.float())
            recorded_next.append(out.next_latents)
            recorded_logp.append(out.log_prob)

    # 5. decode, and gather each sample's trained transitions
    media = policy.decode(out.next_latents)
    recorded_steps = torch.tensor(sorted({int(j) for j in trained.flatten()}))
    position = torch.searchsorted(recorded_steps, trained)  # [G, K] index into the recorded steps
    rows = torch.arange(G).unsqueeze(1)  # [G, 1]
    trajectory = TrajectoryGroup(
        group_id=group.group_id,
        prompt=group.prompt,
        policy_version=policy_version,
        sampler=cfg.kind,
        noise_level=cfg.noise_level,
        seeds=seeds,
        latents=torch.stack(recorded_x, dim=1).cpu()[rows, position],  # [G, K, *latent]
        next_latents=torch.stack(recorded_next, dim=1).cpu()[rows, position],  # [G, K, *latent]
        sigmas=sigmas[trained],  # [G, K]
        next_sigmas=sigmas[trained + 1],  # [G, K]
        schedule_sigma_1=float(sigmas[1]),
        log_probs=torch.stack(recorded_logp, dim=1).cpu()[rows, position],  # [G, K]
        cond=_to_cpu(text.cond),
        uncond=_to_cpu(text.uncond) if text.uncond is not None else None,
        guidance_scale=cfg.guidance_scale,
    )
    return trajectory, MediaGroup(group.group_id, group.prompt, policy_version, media)


@torch.no_grad()
def sample_eval_group(
    policy: DiffusionPolicy, group: PromptGroup, cfg: SamplerConfig, *, run_seed: int, policy_version: int
) -> MediaGroup:
    """Evaluation: the G samples of `group` by deterministic ODE sampling with `cfg.eval_num_steps` steps,
    from the same per-sample seeds as training (`sample_seed`), so the same group gives the same media."""
    G = group.group_size
    generators = [torch.Generator().manual_seed(sample_seed(run_seed, group.seed, i)) for i in range(G)]
    text = _encode(policy, group.prompt, G, cfg.guidance_scale)
    x = _initial_noise(policy, generators)  # [G, *latent]
    sigmas = policy.schedule(cfg.eval_num_steps)  # [T + 1]
    steps = _denoise(
        policy,
        x,
        sigmas,
        text,
        cfg.guidance_scale,
        [ode_step] * cfg.eval_num_steps,
        noise_level=0.0,
        generators=None,
    )
    _, _, last = deque(steps, maxlen=1)[0]  # run every step, keep only the last
    return MediaGroup(group.group_id, group.prompt, policy_version, policy.decode(last.next_latents))


def _to_cpu(e: PromptEmbedding) -> PromptEmbedding:
    return type(e)(tokens=e.tokens.float().cpu(), pooled=None if e.pooled is None else e.pooled.float().cpu())

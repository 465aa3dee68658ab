"""Stateless per-step samplers for flow-matching models, with the log-prob of the drawn step.

Each step takes the latent x at noise level sigma, the model's velocity v, the next level sigma' (explicit
tensors, one value per sample), and either fresh `noise` (sampling) or an already drawn `next_latents`
(re-scoring a recorded transition in the learner). It returns the drawn x', the Gaussian mean and std of
x' given x, and the log-prob of x' averaged over all non-batch dimensions. All math runs in float32.

Flow matching convention: x_sigma = (1 - sigma) * x0 + sigma * noise, v = noise - x0, sigma falls from 1 to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepResult:
    next_latents: Tensor  # [B, *latent] float32, x'
    mean: Tensor  # [B, *latent] float32, mean of x' given x
    std: Tensor  # [B, 1, ...] float32, std of x' given x (broadcasts against latents)
    log_prob: Tensor  # [B] float32, log-density of x' averaged over non-batch dims


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] float32, broadcastable against `like`."""
    return value.to(torch.float32).reshape(-1, *([1] * (like.dim() - 1)))


def _fp32(latents: Tensor, velocity: Tensor, sigma: Tensor, next_sigma: Tensor) -> tuple[Tensor, ...]:
    """The step inputs in float32, sigmas shaped [B, 1, ..., 1] to broadcast against the latents."""
    x = latents.to(torch.float32)
    return x, velocity.to(torch.float32), _per_sample(sigma, x), _per_sample(next_sigma, x)


def _mean_over_sample(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2) per element, averaged over non-batch dims. -> [B]"""
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return _mean_over_sample(log_density)


def _draw(mean: Tensor, std: Tensor, noise: Tensor | None, next_latents: Tensor | None) -> Tensor:
    if next_latents is not None:
        return next_latents.to(torch.float32)
    if noise is None:
        raise ValueError("pass `noise` to sample a step or `next_latents` to score a recorded one")
    return mean + std * noise.to(torch.float32)


def sde_step(
    latents: Tensor,
    velocity: Tensor,
    sigma: Tensor,
    next_sigma: Tensor,
    *,
    noise_level: float,
    sigma_1: float,
    noise: Tensor | None = None,
    next_latents: Tensor | None = None,
) -> StepResult:
    """Flow-GRPO SDE step. sigma_1 is the schedule's second sigma, used for the std at sigma = 1."""
    x, v, s, s_next = _fp32(latents, velocity, sigma, next_sigma)  # [B, *latent] x2, [B, 1...] x2
    dt = s_next - s  # [B, 1...] < 0
    std_t = noise_level * torch.sqrt(s / (1 - torch.where(s == 1, torch.full_like(s, sigma_1), s)))
    mean = x * (1 + std_t**2 * dt / (2 * s)) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    std = std_t * torch.sqrt(-dt)  # [B, 1...]
    x_next = _draw(mean, std, noise, next_latents)
    return StepResult(x_next, mean, std, gaussian_log_prob(x_next, mean, std))


def cps_step(
    latents: Tensor,
    velocity: Tensor,
    sigma: Tensor,
    next_sigma: Tensor,
    *,
    noise_level: float,
    sigma_1: float,
    noise: Tensor | None = None,
    next_latents: Tensor | None = None,
) -> StepResult:
    """Coefficients-preserving step; its log-prob drops the constants: -(x' - mean)^2 averaged."""
    x, v, s, s_next = _fp32(latents, velocity, sigma, next_sigma)
    std = s_next * math.sin(noise_level * math.pi / 2)  # [B, 1...]
    x0 = x - s * v  # predicted clean sample
    x1 = x + (1 - s) * v  # predicted noise
    mean = x0 * (1 - s_next) + x1 * torch.sqrt(torch.clamp(s_next**2 - std**2, min=0))
    x_next = _draw(mean, std, noise, next_latents)
    return StepResult(x_next, mean, std, _mean_over_sample(-((x_next - mean) ** 2)))


def dance_step(
    latents: Tensor,
    velocity: Tensor,
    sigma: Tensor,
    next_sigma: Tensor,
    *,
    noise_level: float,
    sigma_1: float,
    noise: Tensor | None = None,
    next_latents: Tensor | None = None,
) -> StepResult:
    """DanceGRPO step with eta = noise_level: Euler step plus a score correction, std eta * sqrt(sigma - sigma')."""
    x, v, s, s_next = _fp32(latents, velocity, sigma, next_sigma)
    dsigma = s_next - s  # < 0
    x0 = x - s * v
    score = -(x - x0 * (1 - s)) / s**2
    mean = x + dsigma * v - 0.5 * noise_level**2 * score * dsigma
    std = noise_level * torch.sqrt(-dsigma)
    x_next = _draw(mean, std, noise, next_latents)
    return StepResult(x_next, mean, std, gaussian_log_prob(x_next, mean, std))


def ode_step(
    latents: Tensor,
    velocity: Tensor,
    sigma: Tensor,
    next_sigma: Tensor,
    *,
    noise_level: float = 0.0,
    sigma_1: float = 0.0,
    noise: Tensor | None = None,
    next_latents: Tensor | None = None,
) -> StepResult:
    """Deterministic Euler step (evaluation, and the steps outside a Fast window). Log-prob is 0."""
    x = latents.to(torch.float32)
    dt = _per_sample(next_sigma, x) - _per_sample(sigma, x)
    mean = x + dt * velocity.to(torch.float32)
    zeros = torch.zeros(x.shape[0], device=x.device)
    return StepResult(mean, mean, torch.zeros_like(dt), zeros)


StepFn = Callable[..., StepResult]

SAMPLERS: dict[str, StepFn] = {"sde": sde_step, "cps": cps_step, "dance": dance_step, "ode": ode_step}


def get_sampler(kind: str) -> StepFn:
    if kind not in SAMPLERS:
        raise ValueError(f"sampler kind must be one of {sorted(SAMPLERS)}, got {kind!r}")
    return SAMPLERS[kind]

"""The samplers' log-probs equal an independent computation of the density of the drawn sample, and their
means match the published formulas written out independently here."""

import math

import pytest
import torch
from torch.distributions import Normal

from actors.samplers import cps_step, dance_step, gaussian_log_prob, get_sampler, ode_step, sde_step


def _inputs(seed=0, batch=3, shape=(4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g)
    v = torch.randn(batch, *shape, generator=g)
    noise = torch.randn(batch, *shape, generator=g)
    sigma = torch.tensor([0.9, 0.5, 0.2])
    next_sigma = torch.tensor([0.8, 0.3, 0.0])
    return x, v, noise, sigma, next_sigma


def test_sde_logprob_is_the_gaussian_density_of_the_drawn_sample():
    x, v, noise, sigma, next_sigma = _inputs()
    a = 0.7
    out = sde_step(x, v, sigma, next_sigma, noise_level=a, sigma_1=0.95, noise=noise)
    for b in range(3):
        s, s_next = sigma[b].item(), next_sigma[b].item()
        dt = s_next - s
        std_t = a * math.sqrt(s / (1 - s))
        mean = x[b] * (1 + std_t**2 * dt / (2 * s)) + v[b] * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        std = std_t * math.sqrt(-dt)
        drawn = mean + std * noise[b]
        expected = Normal(mean, std).log_prob(drawn).mean()
        torch.testing.assert_close(out.next_latents[b], drawn, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.mean[b], mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.log_prob[b], expected, rtol=1e-5, atol=1e-5)


def test_sde_std_at_sigma_one_uses_the_schedules_second_sigma():
    x, v, noise, _, _ = _inputs(batch=1)
    sigma, next_sigma, sigma_1 = torch.tensor([1.0]), torch.tensor([0.95]), 0.95
    out = sde_step(x, v, sigma, next_sigma, noise_level=0.7, sigma_1=sigma_1, noise=noise)
    expected_std = 0.7 * math.sqrt(1.0 / (1 - sigma_1)) * math.sqrt(0.05)
    assert torch.isfinite(out.log_prob).all()
    torch.testing.assert_close(out.std.flatten(), torch.tensor([expected_std]), rtol=1e-5, atol=0)


def test_rescoring_a_recorded_step_gives_the_recorded_logprob():
    x, v, noise, sigma, next_sigma = _inputs(seed=3)
    for kind in ("sde", "cps", "dance"):
        fn = get_sampler(kind)
        drawn = fn(x, v, sigma, next_sigma, noise_level=0.8, sigma_1=0.95, noise=noise)
        again = fn(x, v, sigma, next_sigma, noise_level=0.8, sigma_1=0.95, next_latents=drawn.next_latents)
        torch.testing.assert_close(again.log_prob, drawn.log_prob, rtol=0, atol=0)
        moved = fn(x, v + 0.1, sigma, next_sigma, noise_level=0.8, sigma_1=0.95, next_latents=drawn.next_latents)
        assert not torch.allclose(moved.log_prob, drawn.log_prob)


def test_cps_step_matches_its_formula():
    x, v, noise, sigma, next_sigma = _inputs(seed=1)
    a = 0.8
    out = cps_step(x, v, sigma, next_sigma, noise_level=a, sigma_1=0.95, noise=noise)
    for b in range(3):
        s, s_next = sigma[b].item(), next_sigma[b].item()
        std_t = s_next * math.sin(a * math.pi / 2)
        x0, x1 = x[b] - s * v[b], x[b] + (1 - s) * v[b]
        mean = x0 * (1 - s_next) + x1 * math.sqrt(max(s_next**2 - std_t**2, 0.0))
        drawn = mean + std_t * noise[b]
        torch.testing.assert_close(out.next_latents[b], drawn, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.log_prob[b], (-((drawn - mean) ** 2)).mean(), rtol=1e-5, atol=1e-5)


def test_dance_step_matches_its_formula():
    x, v, noise, sigma, next_sigma = _inputs(seed=2)
    eta = 0.3
    out = dance_step(x, v, sigma, next_sigma, noise_level=eta, sigma_1=0.95, noise=noise)
    for b in range(3):
        s, s_next = sigma[b].item(), next_sigma[b].item()
        x0 = x[b] - s * v[b]
        score = -(x[b] - x0 * (1 - s)) / s**2
        mean = x[b] + (s_next - s) * v[b] - 0.5 * eta**2 * score * (s_next - s)
        std = eta * math.sqrt(s - s_next)
        drawn = mean + std * noise[b]
        torch.testing.assert_close(out.next_latents[b], drawn, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.log_prob[b], Normal(mean, std).log_prob(drawn).mean(), rtol=1e-5, atol=1e-5)


def test_ode_step_is_euler_and_has_no_logprob():
    x, v, _, sigma, next_sigma = _inputs()
    out = ode_step(x, v, sigma, next_sigma)
    torch.testing.assert_close(out.next_latents, x + (next_sigma - sigma).view(-1, 1, 1, 1) * v)
    assert torch.equal(out.log_prob, torch.zeros(3))


def test_gaussian_log_prob_averages_over_non_batch_dims():
    x = torch.zeros(2, 3, 5)
    lp = gaussian_log_prob(x, torch.zeros_like(x), torch.ones(2, 1, 1))
    torch.testing.assert_close(lp, torch.full((2,), -0.5 * math.log(2 * math.pi)))


def test_unknown_sampler_names_the_known_ones():
    with pytest.raises(ValueError, match=r"\['cps', 'dance', 'ode', 'sde'\], got 'sdee'"):
        get_sampler("sdee")


def test_sampler_needs_noise_or_next_latents():
    x, v, _, sigma, next_sigma = _inputs()
    with pytest.raises(ValueError, match="noise"):
        sde_step(x, v, sigma, next_sigma, noise_level=0.7, sigma_1=0.95)

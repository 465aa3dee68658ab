"""On-policy, the log-prob the DeepSpeed learner recomputes for every sampled transition equals the behaviour
log-prob the rollout worker recorded (ratio 1 within 1e-5): the first correctness check of any change."""

from dataclasses import replace

import pytest
import torch

from actors.rollout_worker import RolloutWorker
from flexgrpo.net import free_port
from flexgrpo.records import PromptGroup
from learner.learner import GRPOLearner
from tests.conftest import scored, tiny_config


def _pair(cfg):
    worker = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed)
    learner = GRPOLearner(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port())
    return worker, learner


@pytest.mark.parametrize(
    "overrides",
    [
        (),  # the tiny recipe: SDE, random trained steps, no CFG
        ("sampler.guidance_scale=4.5", "sampler.train_timesteps=fraction"),  # CFG, unconditional branch detached
        ("sampler.kind=cps", "sampler.noise_level=0.8", "sampler.train_timesteps=window", "sampler.window_size=2"),
        ("sampler.kind=dance", "sampler.noise_level=0.3", "learner.zero_stage=0"),
    ],
    ids=["sde", "sde-cfg", "cps-window", "dance"],
)
def test_recomputed_logprob_equals_behaviour_logprob(overrides):
    cfg = tiny_config("grpo.group_size=4", *overrides)
    worker, learner = _pair(cfg)
    trajectory, media = worker.sample(PromptGroup("g0", "a red cat on a blue sky", 4, seed=11))
    K = learner_steps = trajectory.log_probs.shape[1]
    assert trajectory.latents.shape[:2] == (4, K) and learner_steps >= 1
    assert media.media.shape == (4, cfg.policy.height, cfg.policy.width, 3) and media.media.dtype == torch.uint8
    recomputed = learner.score_transitions(trajectory)
    ratio = torch.exp(recomputed - trajectory.log_probs)
    assert (ratio - 1).abs().max().item() < 1e-5
    if cfg.sampler.train_timesteps == "window":
        steps = (trajectory.sigmas[0].unsqueeze(1) == worker.policy.schedule(cfg.sampler.num_steps)).nonzero()[:, 1]
        assert steps.max() < cfg.sampler.num_steps // 2 + 1 and (steps.diff() == 1).all()


def test_one_update_moves_the_policy_and_the_ratio_leaves_one():
    cfg = tiny_config("grpo.group_size=4", "grpo.groups_per_step=1", "learner.lr=0.05")
    worker, learner = _pair(cfg)
    trajectory, _ = worker.sample(PromptGroup("g0", "a green tree by the sea", 4, seed=5))
    before = learner.trainable_state()
    metrics = learner.train_step([scored(trajectory, [1.0, -1.0, 0.5, -0.5])], trajectory).metrics
    after = learner.trainable_state()
    assert metrics["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # first micro-batches are on-policy
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert learner.version == 1
    ratio = torch.exp(learner.score_transitions(trajectory) - trajectory.log_probs)
    assert (ratio - 1).abs().max().item() > 1e-6  # the data is now off-policy by one version


def test_samples_are_reproducible_from_seeds_and_distinct_across_samples():
    cfg = tiny_config("grpo.group_size=4")
    worker = RolloutWorker(cfg.policy, cfg.sampler, run_seed=0)
    a, _ = worker.sample(PromptGroup("g0", "a cat", 4, seed=3))
    b, _ = worker.sample(PromptGroup("g0-again", "a cat", 4, seed=3))
    c, _ = worker.sample(PromptGroup("g1", "a cat", 4, seed=4))
    assert torch.equal(a.latents, b.latents) and a.seeds == b.seeds
    assert len(set(a.seeds)) == 4 and not set(a.seeds) & set(c.seeds)
    assert not torch.allclose(a.latents[0, 0], a.latents[1, 0])
    other_run = RolloutWorker(cfg.policy, cfg.sampler, run_seed=1).sample(PromptGroup("g0", "a cat", 4, seed=3))[0]
    assert not set(other_run.seeds) & set(a.seeds)


def test_kl_to_the_reference_is_zero_at_start_and_grows_after_an_update():
    cfg = tiny_config("grpo.group_size=4", "grpo.groups_per_step=1", "grpo.kl_beta=0.04", "learner.lr=0.05")
    worker, learner = _pair(cfg)
    trajectory, _ = worker.sample(PromptGroup("g0", "a blue car on a red road", 4, seed=2))
    scores = [scored(trajectory, [1.0, -1.0, 0.5, -0.5])]
    first = learner.train_step(scores, trajectory).metrics
    assert first["loss/kl"] == 0.0  # the fresh adapter (B = 0) is the reference
    second = learner.train_step([replace(scores[0], policy_version=1)], trajectory).metrics
    assert second["loss/kl"] > 0.0
    assert second["loss/loss"] == pytest.approx(second["loss/policy_loss"] + 0.04 * second["loss/kl"], rel=1e-4)

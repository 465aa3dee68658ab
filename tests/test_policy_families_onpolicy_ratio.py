"""Every policy family (SD3, FLUX, Wan video) with every training sampler (SDE with CFG, CPS in a Fast window,
Dance): the log-prob a rollout records equals the density the DeepSpeed learner re-evaluates (ratio 1 within
1e-5 in fp32); a bf16 policy samples and stays within a bf16 bound, before and after an update; evaluation is
deterministic ODE sampling from fixed seeds at the policy's resolution. Real tiny models, no mocks."""

import pytest
import torch

from actors.rollout import sample_eval_group, sample_group
from actors.rollout_worker import RolloutWorker
from flexgrpo.net import free_port
from flexgrpo.records import PromptGroup
from learner.learner import GRPOLearner
from tests.conftest import FAMILIES, copy_weights, scored, tiny_config

SAMPLERS = {
    "sde-cfg": ("sampler.kind=sde", "sampler.noise_level=0.7", "sampler.guidance_scale=4.5"),
    "cps-window": (
        "sampler.kind=cps",
        "sampler.noise_level=0.8",
        "sampler.train_timesteps=window",
        "sampler.window_size=2",
    ),
    "dance": ("sampler.kind=dance", "sampler.noise_level=0.3", "learner.zero_stage=0"),
}
# With LoRA the learner keeps DeepSpeed's mixed precision off (the adapters train in fp32 beside the bf16 base),
# so the learner runs the very modules the rollout worker runs: bf16 is as exact as fp32. (With DeepSpeed's
# bf16 mode the whole module was cast down and the ratio drifted by up to 5.8e-4.)
BF16_BOUND = 1e-5


def family_config(family: str, *overrides: str):
    return tiny_config(
        "grpo.group_size=4",
        "grpo.groups_per_step=1",
        "sampler.num_steps=4",
        "sampler.eval_num_steps=6",
        *FAMILIES[family],
        *overrides,
    )


@pytest.fixture(scope="module")
def worker():
    """One fp32 rollout worker per family, built on first use and shared by this module's tests."""
    built: dict[str, RolloutWorker] = {}

    def get(family: str) -> RolloutWorker:
        if family not in built:
            cfg = family_config(family)
            built[family] = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed)
        return built[family]

    return get


def _learner(cfg) -> GRPOLearner:
    return GRPOLearner(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port())


def _max_ratio_deviation(learner: GRPOLearner, trajectory) -> float:
    return (torch.exp(learner.score_transitions(trajectory) - trajectory.log_probs) - 1).abs().max().item()


def _media_shape(cfg, n: int) -> tuple[int, ...]:
    frames = (cfg.policy.num_frames,) if cfg.policy.family == "wan" else ()
    return (n, *frames, cfg.policy.height, cfg.policy.width, 3)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_recorded_logprob_equals_learner_density_fp32(family, sampler, worker):
    cfg = family_config(family, *SAMPLERS[sampler])
    trajectory, media = sample_group(
        worker(family).policy,
        PromptGroup("g0", "a red cat on a blue sky", 4, seed=11),
        cfg.sampler,
        run_seed=0,
        policy_version=0,
    )
    assert trajectory.sampler == cfg.sampler.kind and trajectory.log_probs.shape[0] == 4
    assert media.media.shape == _media_shape(cfg, 4) and media.media.dtype == torch.uint8
    assert _max_ratio_deviation(_learner(cfg), trajectory) < 1e-5


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_low_precision_policy_samples_and_learner_ratio_stays_within_bound(family, dtype):
    cfg = family_config(family, f"policy.dtype={dtype}", "learner.lr=0.05")
    rollout = RolloutWorker(cfg.policy, cfg.sampler, run_seed=0)
    learner = _learner(cfg)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert any(p.dtype == torch_dtype for p in rollout.policy.transformer.parameters())

    trajectory, media = rollout.sample(PromptGroup("g0", "a green tree by the sea", 4, seed=5))
    assert media.media.shape == _media_shape(cfg, 4) and trajectory.latents.dtype == torch.float32
    assert _max_ratio_deviation(learner, trajectory) < BF16_BOUND

    learner.train_step([scored(trajectory, [1.0, -1.0, 0.5, -0.5])], trajectory)
    copy_weights(learner, rollout)
    trajectory, _ = rollout.sample(PromptGroup("g1", "a green tree by the sea", 4, seed=6))
    assert _max_ratio_deviation(learner, trajectory) < BF16_BOUND


@pytest.mark.parametrize("family", list(FAMILIES))
def test_eval_is_fixed_seed_ode_at_the_policy_resolution(family, worker):
    cfg = family_config(family)
    rollout = worker(family)
    group = PromptGroup("eval-0", "a small house", 2, seed=7)
    first, again = rollout.evaluate(group), rollout.evaluate(group)
    assert first.media.shape == _media_shape(cfg, 2) and first.media.dtype == torch.uint8
    assert torch.equal(first.media, again.media)  # deterministic: no sampler noise, seeds fixed
    assert not torch.equal(first.media[0], first.media[1])  # distinct seeds per sample
    other_seed = rollout.evaluate(PromptGroup("eval-1", "a small house", 2, seed=8))
    assert not torch.equal(first.media, other_seed.media)
    fewer_steps = family_config(family, "sampler.eval_num_steps=2").sampler
    coarse = sample_eval_group(rollout.policy, group, fewer_steps, run_seed=0, policy_version=0)
    assert not torch.equal(first.media, coarse.media)  # eval_num_steps sets the ODE's steps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("dtype", "bound"), [("fp32", 1e-5), ("bf16", BF16_BOUND)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_on_cuda_recorded_logprob_equals_learner_density(family, dtype, bound):
    cfg = family_config(family, *SAMPLERS["sde-cfg"], f"policy.dtype={dtype}")
    rollout = RolloutWorker(cfg.policy, cfg.sampler, run_seed=0)
    assert rollout.device.type == "cuda"
    trajectory, _ = rollout.sample(PromptGroup("g0", "a red cat on a blue sky", 4, seed=11))
    assert _max_ratio_deviation(_learner(cfg), trajectory) < bound

"""What the learner exports loads in plain diffusers (a LoRA with `load_lora_weights`, a full fine-tune with
`from_pretrained`) and reproduces the trained policy's samples for the same seeds."""

from __future__ import annotations

import socket

import pytest
import torch

from actors.rollout import sample_group
from actors.rollout_worker import RolloutWorker
from flexgrpo.records import PromptGroup, ScoredGroup
from learner.learner import GRPOLearner
from tests.conftest import copy_weights, tiny_config

pytestmark = pytest.mark.slow
PROMPT = "a photo of a red cat"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trained(*overrides: str) -> tuple[GRPOLearner, RolloutWorker]:
    """A one-rank learner on the tiny recipe after one GRPO step on one group a rollout worker sampled, and that
    worker with the trained weights (the learner holds no text encoder: the worker's pipeline samples)."""
    cfg = tiny_config("grpo.group_size=4", "grpo.groups_per_step=1", "sampler.num_steps=4", *overrides)
    learner = GRPOLearner(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port())
    rollout = RolloutWorker(cfg.policy, cfg.sampler, run_seed=0)
    prompt = PromptGroup("s0-g0", PROMPT, 4, 1)
    group, _ = sample_group(rollout.policy, prompt, cfg.sampler, run_seed=0, policy_version=0)
    rewards = torch.tensor([1.0, -1.0, 0.5, -0.5])
    score = ScoredGroup("s0-g0", PROMPT, 0, 0, rewards, {"jpeg_compressibility": rewards})
    learner.train_step([score], group)
    copy_weights(learner, rollout)
    return learner, rollout


def latents(pipe) -> torch.Tensor:
    """Plain diffusers sampling: 4 Euler steps, fixed seeds. -> [2, C, h, w]"""
    g = [torch.Generator().manual_seed(s) for s in (7, 8)]
    return pipe([PROMPT] * 2, num_inference_steps=4, guidance_scale=1.0, generator=g, output_type="latent").images


def base_pipeline():
    from diffusers import StableDiffusion3Pipeline

    from actors.tiny_models import resolve_model

    pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model("tiny-sd3"), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_exported_lora_loads_in_diffusers_and_reproduces_samples(tmp_path):
    learner, rollout = trained()
    folder = learner.export(tmp_path / "lora")
    expected = latents(rollout.policy.pipeline)
    pipe = base_pipeline()
    untrained = latents(pipe)
    pipe.load_lora_weights(str(folder))
    assert not torch.allclose(untrained, expected, atol=1e-4)  # the step changed the policy
    torch.testing.assert_close(latents(pipe), expected, rtol=0, atol=1e-5)


def test_exported_full_transformer_loads_with_from_pretrained_and_reproduces_samples(tmp_path):
    from diffusers import SD3Transformer2DModel

    learner, rollout = trained("policy.lora.enabled=false", "learner.lr=1e-3")
    folder = learner.export(tmp_path / "transformer")
    expected = latents(rollout.policy.pipeline)
    pipe = base_pipeline()
    untrained = latents(pipe)
    pipe.transformer = SD3Transformer2DModel.from_pretrained(folder)
    assert not torch.allclose(untrained, expected, atol=1e-4)
    torch.testing.assert_close(latents(pipe), expected, rtol=0, atol=1e-5)

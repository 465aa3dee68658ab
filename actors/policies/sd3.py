"""Stable Diffusion 3 / 3.5 (SD3Transformer2DModel, flow matching, two CLIP encoders and an optional T5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actors.policies.base import (
    TORCH_DTYPES,
    check_text_encoders,
    decode_images,
    load_pipeline,
    prepare_transformer,
    scheduler_sigmas,
)
from flexgrpo.config import PolicyConfig
from flexgrpo.records import PromptEmbedding


class SD3Policy:
    family = "sd3"

    def __init__(
        self, cfg: PolicyConfig, device: torch.device | str = "cpu", pipeline=None, text_encoders: bool = True
    ) -> None:
        """pipeline: an already built StableDiffusion3Pipeline (benchmarks); None loads `cfg.model`."""
        from diffusers import StableDiffusion3Pipeline

        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[cfg.dtype]
        if pipeline is None:
            pipeline = load_pipeline(StableDiffusion3Pipeline, cfg, self.dtype, text_encoders)
        self.pipeline = pipeline.to(self.device)
        self.transformer = self.pipeline.transformer
        prepare_transformer(self.transformer, cfg)
        self._vae_scale = self.pipeline.vae_scale_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbedding]:
        check_text_encoders(self.pipeline)
        tokens, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.cfg.max_sequence_length,
        )
        return [PromptEmbedding(tokens=t, pooled=p) for t, p in zip(tokens, pooled, strict=True)]

    def velocity(self, model: nn.Module, latents: Tensor, sigma: Tensor, cond: PromptEmbedding) -> Tensor:
        timestep = sigma * self.pipeline.scheduler.config.num_train_timesteps  # [B]
        return model(
            hidden_states=latents.to(self.dtype),
            encoder_hidden_states=cond.tokens.to(self.device, self.dtype),
            pooled_projections=cond.pooled.to(self.device, self.dtype),
            timestep=timestep.to(self.device, self.dtype),
            return_dict=False,
        )[0]

    def latent_shape(self) -> tuple[int, ...]:
        channels = self.transformer.config.in_channels
        return (channels, self.cfg.height // self._vae_scale, self.cfg.width // self._vae_scale)

    def schedule(self, num_steps: int) -> Tensor:
        return scheduler_sigmas(self.pipeline.scheduler, num_steps)

    def decode(self, latents: Tensor) -> Tensor:
        return decode_images(self.pipeline.vae, latents)

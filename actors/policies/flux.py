"""FLUX.1 (FluxTransformer2DModel: packed 2x2 latent patches, rotary text/image ids, CLIP pooled + T5 tokens).

Latents are kept unpacked, [C, H/8, W/8], as the FLUX pipeline draws its noise; `velocity` packs them into
the transformer's token sequence and unpacks its output. Guidance-distilled checkpoints (FLUX.1-dev) take
`policy.distilled_guidance_scale` as the transformer's guidance input; true CFG is `sampler.guidance_scale`.
"""

from __future__ import annotations

import numpy as np
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


def pack_latents(latents: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, 4C]: 2x2 patches as tokens, in the FLUX pipeline's order."""
    B, C, h, w = latents.shape
    patches = latents.reshape(B, C, h // 2, 2, w // 2, 2)  # [B, C, h/2, 2, w/2, 2]
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # [B, h/2, w/2, C, 2, 2]
    return patches.reshape(B, (h // 2) * (w // 2), C * 4)


def unpack_latents(tokens: Tensor, h: int, w: int) -> Tensor:
    """[B, h/2 * w/2, 4C] -> [B, C, h, w], the inverse of `pack_latents`."""
    B, _, D = tokens.shape
    patches = tokens.reshape(B, h // 2, w // 2, D // 4, 2, 2)  # [B, h/2, w/2, C, 2, 2]
    patches = patches.permute(0, 3, 1, 4, 2, 5)  # [B, C, h/2, 2, w/2, 2]
    return patches.reshape(B, D // 4, h, w)


def image_ids(h: int, w: int) -> Tensor:
    """Rotary position ids of the packed tokens: (0, row, column). -> [h/2 * w/2, 3]"""
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()


def resolution_shift(image_seq_len: int, config) -> float:
    """The FLUX pipeline's mu: the schedule's time shift, linear in the number of image tokens."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


class FluxPolicy:
    family = "flux"

    def __init__(self, cfg: PolicyConfig, device: torch.device | str = "cpu", text_encoders: bool = True) -> None:
        from diffusers import FluxPipeline

        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[cfg.dtype]
        self.pipeline = load_pipeline(FluxPipeline, cfg, self.dtype, text_encoders).to(self.device)
        self.transformer = self.pipeline.transformer
        prepare_transformer(self.transformer, cfg)
        scale = self.pipeline.vae_scale_factor * 2  # 8x VAE, then 2x2 packing
        self._h, self._w = 2 * (cfg.height // scale), 2 * (cfg.width // scale)
        self._img_ids = image_ids(self._h, self._w).to(self.device)  # [N, 3]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbedding]:
        check_text_encoders(self.pipeline)
        tokens, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            max_sequence_length=self.cfg.max_sequence_length,
        )
        return [PromptEmbedding(tokens=t, pooled=p) for t, p in zip(tokens, pooled, strict=True)]

    def velocity(self, model: nn.Module, latents: Tensor, sigma: Tensor, cond: PromptEmbedding) -> Tensor:
        B = latents.shape[0]
        tokens = cond.tokens.to(self.device, self.dtype)  # [B, L, D]
        guidance = None  # [B] the distilled guidance scale, for checkpoints trained with it
        if self.transformer.config.guidance_embeds:
            scale = self.cfg.distilled_guidance_scale
            guidance = torch.full((B,), scale, device=self.device, dtype=torch.float32)  # as the pipeline
        out = model(
            hidden_states=pack_latents(latents.to(self.dtype)),  # [B, N, 4C]
            timestep=sigma.to(self.device, self.dtype),  # the transformer scales it by 1000 itself
            guidance=guidance,
            pooled_projections=cond.pooled.to(self.device, self.dtype),
            encoder_hidden_states=tokens,
            txt_ids=torch.zeros(tokens.shape[1], 3, device=self.device, dtype=self.dtype),  # [L, 3]
            img_ids=self._img_ids.to(self.dtype),  # [N, 3]
            return_dict=False,
        )[0]  # [B, N, 4C]
        return unpack_latents(out, self._h, self._w)  # [B, C, h, w]

    def latent_shape(self) -> tuple[int, ...]:
        return (self.transformer.config.in_channels // 4, self._h, self._w)

    def schedule(self, num_steps: int) -> Tensor:
        """The FLUX pipeline's schedule: sigmas linspace(1, 1/T, T), time-shifted by the resolution's mu."""
        config = self.pipeline.scheduler.config
        mu = resolution_shift((self._h // 2) * (self._w // 2), config)
        sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
        return scheduler_sigmas(self.pipeline.scheduler, num_steps, sigmas=sigmas, mu=mu)

    def decode(self, latents: Tensor) -> Tensor:
        return decode_images(self.pipeline.vae, latents)

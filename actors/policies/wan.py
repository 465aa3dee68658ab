"""Wan 2.1 / 2.2 text-to-video (WanTransformer3DModel, AutoencoderKLWan, a UMT5 text encoder).

One sample's latent is [C, F', H/8, W/8] with F' = (F - 1) / 4 + 1 latent frames; media are uint8 videos
[F, H, W, 3]. Wan 2.2 TI2V (per-token timesteps, `expand_timesteps`) is covered; the two-expert A14B models
(`transformer_2`) are not: GRPO would have to train both experts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actors.policies.base import (
    TORCH_DTYPES,
    check_text_encoders,
    load_pipeline,
    prepare_transformer,
    scheduler_sigmas,
    to_uint8,
)
from flexgrpo.config import PolicyConfig
from flexgrpo.records import PromptEmbedding


class WanPolicy:
    family = "wan"

    def __init__(self, cfg: PolicyConfig, device: torch.device | str = "cpu", text_encoders: bool = True) -> None:
        from diffusers import WanPipeline

        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[cfg.dtype]
        self.pipeline = load_pipeline(WanPipeline, cfg, self.dtype, text_encoders).to(self.device)
        if self.pipeline.transformer_2 is not None:
            raise ValueError(
                f"policy.model {cfg.model!r} has two expert transformers (Wan 2.2 A14B); policy.family 'wan' "
                "trains one: use Wan2.1-T2V-1.3B/14B or Wan2.2-TI2V-5B"
            )
        temporal = self.pipeline.vae_scale_factor_temporal
        if (cfg.num_frames - 1) % temporal:
            raise ValueError(f"policy.num_frames must be 1 + a multiple of {temporal}, got {cfg.num_frames}")
        self.transformer = self.pipeline.transformer
        prepare_transformer(self.transformer, cfg)
        spatial = self.pipeline.vae_scale_factor_spatial
        self._shape = (
            self.transformer.config.in_channels,
            (cfg.num_frames - 1) // temporal + 1,
            cfg.height // spatial,
            cfg.width // spatial,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbedding]:
        check_text_encoders(self.pipeline)
        tokens, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=self.cfg.max_sequence_length,
            device=self.device,
        )
        return [PromptEmbedding(tokens=t) for t in tokens]  # padded with zeros past the prompt, as Wan trains

    def velocity(self, model: nn.Module, latents: Tensor, sigma: Tensor, cond: PromptEmbedding) -> Tensor:
        train_steps = self.pipeline.scheduler.config.num_train_timesteps
        timestep = sigma.to(self.device, torch.float32) * train_steps  # [B]
        if self.pipeline.config.expand_timesteps:  # Wan 2.2 TI2V: one timestep per patch token
            _, f, h, w = self._shape
            _, p_h, p_w = self.transformer.config.patch_size
            timestep = timestep.unsqueeze(1).expand(-1, f * (h // p_h) * (w // p_w))  # [B, N]
        return model(
            hidden_states=latents.to(self.dtype),  # [B, C, F', h, w]
            timestep=timestep,
            encoder_hidden_states=cond.tokens.to(self.device, self.dtype),  # [B, L, D]
            return_dict=False,
        )[0]

    def latent_shape(self) -> tuple[int, ...]:
        return self._shape

    def schedule(self, num_steps: int) -> Tensor:
        """The pipeline scheduler's flow sigmas (Wan: UniPC with flow_shift), starting at exactly 1."""
        return scheduler_sigmas(self.pipeline.scheduler, num_steps)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        vae = self.pipeline.vae
        view = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(view).to(latents.device)
        std = torch.tensor(vae.config.latents_std).view(view).to(latents.device)
        latents = latents.float() * std + mean  # [B, C, F', h, w]
        video = vae.decode(latents.to(vae.dtype), return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        return to_uint8(video).permute(0, 2, 3, 4, 1).cpu()  # [B, F, H, W, 3]

"""What every policy family provides, and the helpers they share.

A policy wraps one diffusers pipeline: its transformer (the trained module, optionally with a LoRA adapter),
its text encoders, VAE and scheduler config. The sampling loop and the learner only talk to this interface,
so a family adds itself by implementing it in one file and naming itself in `actors.policies.POLICY_FAMILIES`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from flexgrpo.config import LoraConfig, PolicyConfig
from flexgrpo.records import PromptEmbedding

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DiffusionPolicy(Protocol):
    transformer: nn.Module  # the trained module; `velocity` takes it (or its DeepSpeed engine) explicitly

    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbedding]:
        """One conditioning per prompt ("" gives the unconditional one used for CFG)."""
        ...

    def velocity(self, model: nn.Module, latents: Tensor, sigma: Tensor, cond: PromptEmbedding) -> Tensor:
        """Model velocity for a batch. latents [B, *latent], sigma [B], cond batched ([B, L, D]). -> [B, *latent]"""
        ...

    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latent."""
        ...

    def schedule(self, num_steps: int) -> Tensor:
        """The sigmas of a `num_steps` schedule, from 1 down to 0. -> [num_steps + 1] float32"""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, *latent] -> media uint8 [B, H, W, 3] (images) or [B, F, H, W, 3] (videos)."""
        ...


TEXT_PARTS = ("text_encoder", "tokenizer")  # how diffusers names a pipeline's text encoders and tokenizers


def load_pipeline(pipeline_cls: type, cfg: PolicyConfig, dtype: torch.dtype, text_encoders: bool = True):
    """Load `cfg.model`'s diffusers pipeline from a folder or hub id, with the transformer saved in
    `cfg.transformer` in place of its own when set; components saved as absent (null) stay absent.
    text_encoders=False leaves the text encoders and tokenizers out (a learner re-scores recorded prompt
    embeddings and never encodes a prompt: T5-XXL alone is 8.9 GiB in bf16)."""
    import diffusers
    import transformers

    from actors.tiny_models import TINY_MODELS, resolve_model
    from flexgrpo.model_cache import check_model_reference

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    check_model_reference("policy.model", cfg.model, TINY_MODELS)
    path = resolve_model(cfg.model)
    components = {}
    index = Path(path) / "model_index.json"
    if index.exists():
        components = {k: None for k, v in json.loads(index.read_text()).items() if v == [None, None]}
    if not text_encoders:
        components |= {k: None for k in inspect.signature(pipeline_cls.__init__).parameters if k.startswith(TEXT_PARTS)}
    if cfg.transformer is not None:
        components["transformer"] = load_transformer(cfg.transformer, dtype)
    pipe = pipeline_cls.from_pretrained(path, dtype=dtype, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_text_encoders(pipeline) -> None:
    """A policy built without its text encoders (a learner's) cannot encode a prompt: say so."""
    if pipeline.text_encoder is None:
        raise RuntimeError(
            "this policy was built without its text encoders (text_encoders=False, as a learner "
            "builds it): it cannot encode prompts"
        )


def load_transformer(folder: str | Path, dtype: torch.dtype) -> nn.Module:
    """A transformer saved by diffusers (`save_pretrained`, or the learner's export), of the class its config
    names."""
    import diffusers

    class_name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name", "")
    model_cls = getattr(diffusers, class_name, None)
    if model_cls is None:
        raise ValueError(f"policy.transformer {folder}: its config.json names no diffusers model ({class_name!r})")
    return model_cls.from_pretrained(folder, dtype=dtype)


def scheduler_sigmas(scheduler, num_steps: int, **set_timesteps_kwargs) -> Tensor:
    """The sigmas a pipeline's scheduler steps through for `num_steps` steps. -> [num_steps + 1] float32

    A fresh scheduler from the pipeline's config, so no step cursor is shared. A first sigma nudged just
    below 1 (UniPC does, to keep its log finite) is put back to 1, where the SDE std uses sigma_1.
    """
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_steps, device="cpu", **set_timesteps_kwargs)
    sigmas = torch.as_tensor(fresh.sigmas, dtype=torch.float32).clone()  # [num_steps + 1]
    if 1 - sigmas[0] < 1e-5:
        sigmas[0] = 1.0
    return sigmas


def add_lora(transformer: nn.Module, lora: LoraConfig) -> None:
    """Freeze the transformer and give it a trainable LoRA adapter (B initialised to 0: no change at start)."""
    from peft import LoraConfig as PeftLoraConfig

    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every role (learner ranks, rollout workers) builds the same initial adapter
        transformer.add_adapter(
            PeftLoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                init_lora_weights="gaussian",
                target_modules=list(lora.target_modules),
            )
        )
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # adapters train in fp32 whatever the base dtype


def prepare_transformer(transformer: nn.Module, cfg: PolicyConfig) -> None:
    if cfg.lora.enabled:
        add_lora(transformer, cfg.lora)
    else:
        transformer.requires_grad_(True)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the learner trains and broadcasts, by name (same names on every role)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@contextmanager
def adapter_disabled(transformer: nn.Module) -> Iterator[None]:
    """The reference policy: the same transformer with its LoRA adapter switched off."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def batch_embeddings(embeddings: list[PromptEmbedding]) -> PromptEmbedding:
    """Stack per-sample conditionings into one batch: tokens [B, L, D], pooled [B, P]."""
    pooled = [e.pooled for e in embeddings]
    return PromptEmbedding(
        tokens=torch.stack([e.tokens for e in embeddings]),
        pooled=None if pooled[0] is None else torch.stack(pooled),  # type: ignore[arg-type]
    )


def guided_velocity(
    policy: DiffusionPolicy,
    model: nn.Module,
    latents: Tensor,
    sigma: Tensor,
    cond: PromptEmbedding,
    uncond: PromptEmbedding | None,
    guidance_scale: float,
) -> Tensor:
    """Velocity with classifier-free guidance. The unconditional branch never carries gradients, and both
    branches run as separate forwards in sampling and training alike, so a recomputed step is bit-identical."""
    v_cond = policy.velocity(model, latents, sigma, cond)
    if uncond is None or guidance_scale == 1.0:
        return v_cond
    with torch.no_grad():
        v_uncond = policy.velocity(model, latents, sigma, uncond)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def to_uint8(images: Tensor) -> Tensor:
    """Decoder output in [-1, 1] -> uint8 in [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def decode_images(vae: nn.Module, latents: Tensor) -> Tensor:
    """Image VAE (SD3, FLUX): latents [B, C, h, w] -> uint8 [B, H, W, 3], undoing the latent scale/shift."""
    latents = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]  # [B, 3, H, W] in [-1, 1]
    return to_uint8(images).permute(0, 2, 3, 1).cpu()  # [B, H, W, 3]

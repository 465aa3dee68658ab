"""The real recipes' policies at their real shapes, built offline with random weights.

Each `*_CONFIG` below is a published config (the hub model named beside it), written down as facts. The
builders use them unchanged except for what `DEPTH` cuts (transformer blocks, text-encoder layers) and the
vocabulary (every tokenizer here is the small byte-level BPE of `actors.tiny_models`, so each text encoder's
embedding table has that tokenizer's size instead of the published vocabulary: no tokenizer file can be
downloaded). Widths, heads, structural flags, latent channels, patch sizes, VAEs and schedulers stay real.
`real_shape_path(name)` builds a pipeline folder once and caches it like the tiny models.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from flexgrpo.model_cache import built_in_bf16, cached_build

# --------------------------------------------------------------------------------------- published configs
# stabilityai/stable-diffusion-3.5-medium transformer/config.json (SD3Transformer2DModel): MMDiT-X, dual
# attention in the first 13 blocks, RMS QK norm, T5-XXL width as the joint attention dim.
SD35_MEDIUM_TRANSFORMER_CONFIG = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}
# stabilityai/stable-diffusion-3.5-medium vae/config.json (AutoencoderKL, 16 latent channels, 8x).
SD35_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
# stabilityai/stable-diffusion-3.5-medium scheduler/scheduler_config.json
SD35_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}
# stabilityai/stable-diffusion-3.5-medium text_encoder/config.json: OpenAI CLIP ViT-L/14's text tower
# (openai/clip-vit-large-patch14), with projection. FLUX.1-dev's text_encoder is the same tower without it.
CLIP_L_TEXT_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "vocab_size": 49408,
}
# stabilityai/stable-diffusion-3.5-medium text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower.
CLIP_G_TEXT_CONFIG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "vocab_size": 49408,
}
# stabilityai/stable-diffusion-3.5-medium text_encoder_3/config.json and black-forest-labs/FLUX.1-dev
# text_encoder_2/config.json: the T5 v1.1 XXL encoder (google/t5-v1_1-xxl).
T5_XXL_CONFIG = {
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_heads": 64,
    "num_layers": 24,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "vocab_size": 32128,
}
# black-forest-labs/FLUX.1-dev transformer/config.json (FluxTransformer2DModel): 19 double + 38 single blocks,
# guidance embedding (guidance-distilled), T5-XXL tokens, CLIP-L pooled vector, 64 = 16 channels x 2x2 packing.
FLUX_DEV_TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
# black-forest-labs/FLUX.1-dev vae/config.json: the SD3 VAE layout with FLUX's latent statistics.
FLUX_DEV_VAE_CONFIG = SD35_VAE_CONFIG | {"scaling_factor": 0.3611, "shift_factor": 0.1159}
# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json (resolution-dependent shift)
FLUX_DEV_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json (WanTransformer3DModel)
WAN21_T2V_13B_TRANSFORMER_CONFIG = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json (AutoencoderKLWan: 8x spatial, 4x temporal, 16 channels)
WAN21_VAE_CONFIG = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "latents_mean": [
        -0.7571,
        -0.7089,
        -0.9113,
        0.1075,
        -0.1745,
        0.9653,
        -0.1517,
        1.5508,
        0.4134,
        -0.0715,
        0.5517,
        -0.3632,
        -0.1922,
        -0.9497,
        0.2503,
        -0.2921,
    ],  # fmt: skip
    "latents_std": [
        2.8184,
        1.4541,
        2.3275,
        2.6558,
        1.2196,
        1.7708,
        2.6052,
        2.0743,
        3.2687,
        2.1526,
        2.8652,
        1.5579,
        1.6382,
        1.1253,
        2.8251,
        1.916,
    ],  # fmt: skip
}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler (UniPC flow, shift 3 for 480p)
WAN21_SCHEDULER_CONFIG = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers text_encoder/config.json: the UMT5-XXL encoder (google/umt5-xxl).
UMT5_XXL_CONFIG = T5_XXL_CONFIG | {"vocab_size": 256384}

# ------------------------------------------------------------------------------------------- the cuts
DEPTH = {
    "sd3_layers": 2,  # layer 0 with dual attention, layer 1 without: both MMDiT-X block kinds
    "sd3_dual_attention_layers": [0],
    "flux_double": 1,
    "flux_single": 1,
    "wan_layers": 1,
    "text_layers": 1,  # every CLIP / T5 / UMT5 encoder
}
# Full depth (the published depths; GPU machines, scripts/gpu_check.sh): only the vocabulary stays cut.
FULL_DEPTH = {
    "sd3_layers": SD35_MEDIUM_TRANSFORMER_CONFIG["num_layers"],
    "sd3_dual_attention_layers": SD35_MEDIUM_TRANSFORMER_CONFIG["dual_attention_layers"],
    "flux_double": FLUX_DEV_TRANSFORMER_CONFIG["num_layers"],
    "flux_single": FLUX_DEV_TRANSFORMER_CONFIG["num_single_layers"],
    "wan_layers": WAN21_T2V_13B_TRANSFORMER_CONFIG["num_layers"],
    "text_layers": None,  # each encoder's own
}
_MARKER = ".built-real-v1"  # bump when a build changes


def depth(full_depth: bool) -> dict:
    """The depths a build uses: the cut ones (CPU tests) or the published ones."""
    return FULL_DEPTH if full_depth else DEPTH


def _layers(published: dict, key: str, full_depth: bool) -> dict:
    return {key: depth(full_depth)["text_layers"] or published[key]}


def clip_text_config(published: dict, tokenizer, full_depth: bool = False):
    """A CLIP text config: `published` at the cut depth, with the tokenizer's vocabulary and special tokens."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **(published | _layers(published, "num_hidden_layers", full_depth) | {"vocab_size": len(tokenizer)}),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def t5_config(config_cls: str, published: dict, tokenizer, full_depth: bool = False):
    """A T5 / UMT5 encoder config: `published` at the cut depth, with the tokenizer's vocabulary."""
    import transformers

    return getattr(transformers, config_cls)(
        **(published | _layers(published, "num_layers", full_depth) | {"vocab_size": len(tokenizer)}),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _clip(cls_name: str, published: dict, tokenizer, seed: int, full_depth: bool):
    import transformers

    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(clip_text_config(published, tokenizer, full_depth)).eval()


def _t5(config_cls: str, model_cls: str, published: dict, tokenizer, seed: int, full_depth: bool):
    import transformers

    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(t5_config(config_cls, published, tokenizer, full_depth)).eval()


def sd35_medium_transformer_config(full_depth: bool = False) -> dict:
    """SD3.5-Medium's transformer config at the cut (or full) depth."""
    d = depth(full_depth)
    return SD35_MEDIUM_TRANSFORMER_CONFIG | {
        "num_layers": d["sd3_layers"],
        "dual_attention_layers": d["sd3_dual_attention_layers"],
    }


def flux_dev_transformer_config(full_depth: bool = False) -> dict:
    """FLUX.1-dev's transformer config at the cut (or full) depth."""
    d = depth(full_depth)
    return FLUX_DEV_TRANSFORMER_CONFIG | {"num_layers": d["flux_double"], "num_single_layers": d["flux_single"]}


def wan21_transformer_config(full_depth: bool = False) -> dict:
    """Wan 2.1 T2V 1.3B's transformer config at the cut (or full) depth."""
    return WAN21_T2V_13B_TRANSFORMER_CONFIG | {"num_layers": depth(full_depth)["wan_layers"]}


def build_sd35_medium(path: Path, full_depth: bool = False) -> None:
    """StableDiffusion3Pipeline: SD3.5-M transformer, CLIP-L + CLIP-G (with projections), T5-XXL, its VAE."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    from actors.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    t5_tokenizer = build_tokenizer(max_length=512)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**sd35_medium_transformer_config(full_depth))
    torch.manual_seed(1)
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER_CONFIG),
        vae=AutoencoderKL(**SD35_VAE_CONFIG).eval(),
        text_encoder=_clip("CLIPTextModelWithProjection", CLIP_L_TEXT_CONFIG, tokenizer, 2, full_depth),
        tokenizer=tokenizer,
        text_encoder_2=_clip("CLIPTextModelWithProjection", CLIP_G_TEXT_CONFIG, tokenizer, 3, full_depth),
        tokenizer_2=tokenizer,
        text_encoder_3=_t5("T5Config", "T5EncoderModel", T5_XXL_CONFIG, t5_tokenizer, 4, full_depth),
        tokenizer_3=t5_tokenizer,
    ).save_pretrained(path)
    (path / _MARKER).touch()


def build_flux_dev(path: Path, full_depth: bool = False) -> None:
    """FluxPipeline: FLUX.1-dev transformer (guidance embedding), CLIP-L (no projection), T5-XXL, its VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from actors.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    t5_tokenizer = build_tokenizer(max_length=512)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**flux_dev_transformer_config(full_depth))
    torch.manual_seed(1)
    FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER_CONFIG),
        vae=AutoencoderKL(**FLUX_DEV_VAE_CONFIG).eval(),
        text_encoder=_clip("CLIPTextModel", CLIP_L_TEXT_CONFIG, tokenizer, 2, full_depth),
        tokenizer=tokenizer,
        text_encoder_2=_t5("T5Config", "T5EncoderModel", T5_XXL_CONFIG, t5_tokenizer, 3, full_depth),
        tokenizer_2=t5_tokenizer,
    ).save_pretrained(path)
    (path / _MARKER).touch()


def build_wan21_t2v_13b(path: Path, full_depth: bool = False) -> None:
    """WanPipeline: Wan 2.1 T2V 1.3B transformer, UMT5-XXL, AutoencoderKLWan, UniPC flow scheduler."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    from actors.tiny_models import build_tokenizer

    tokenizer = build_tokenizer(max_length=512)
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**wan21_transformer_config(full_depth))
    torch.manual_seed(1)
    WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5("UMT5Config", "UMT5EncoderModel", UMT5_XXL_CONFIG, tokenizer, 3, full_depth),
        vae=AutoencoderKLWan(**WAN21_VAE_CONFIG).eval(),
        scheduler=UniPCMultistepScheduler(**WAN21_SCHEDULER_CONFIG),
        transformer=transformer,
    ).save_pretrained(path)
    (path / _MARKER).touch()


REAL_SHAPE_POLICIES: dict[str, Callable[..., None]] = {
    "real-shape-sd3.5-medium": build_sd35_medium,  # stabilityai/stable-diffusion-3.5-medium
    "real-shape-flux.1-dev": build_flux_dev,  # black-forest-labs/FLUX.1-dev
    "real-shape-wan2.1-t2v-1.3b": build_wan21_t2v_13b,  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers
}


def real_shape_path(name: str, full_depth: bool = False) -> Path:
    """The cached pipeline folder of a real-shape policy, built on first use (full depth: in bf16, to halve the
    memory and disk a 12B random model takes)."""
    if name not in REAL_SHAPE_POLICIES:
        raise ValueError(f"unknown real-shape policy {name!r}; known: {sorted(REAL_SHAPE_POLICIES)}")
    if not full_depth:
        return cached_build(name, REAL_SHAPE_POLICIES[name], _MARKER)
    return cached_build(f"{name}-full-depth", partial(built_in_bf16, REAL_SHAPE_POLICIES[name]), _MARKER)

"""The real-shape builders make the published architectures: every structural field of each model they build
equals the hub config.json of the model it stands for (written out below with its source), except the declared
cuts (depth; vocabulary where the tokenizer is built here). Models are built on the meta device: configs, no
weights, so this runs in seconds."""

from __future__ import annotations

import pytest
from accelerate import init_empty_weights

from actors import real_shapes as rs
from reward_workers import real_shape_judges as rj

# stabilityai/stable-diffusion-3.5-medium transformer/config.json
SD35_MEDIUM_TRANSFORMER = {
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
    "dual_attention_layers": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    "qk_norm": "rms_norm",
}
# stabilityai/stable-diffusion-3.5-medium vae/config.json (structural fields and latent statistics)
SD35_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV_TRANSFORMER = {
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
# black-forest-labs/FLUX.1-dev vae/config.json
FLUX_DEV_VAE = SD35_VAE | {"scaling_factor": 0.3611, "shift_factor": 0.1159}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
WAN21_T2V_13B_TRANSFORMER = {
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
    "added_kv_proj_dim": None,
}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json
WAN21_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2}
WAN21_VAE_TEMPORAL_DOWNSAMPLE = [False, True, True]
# openai/clip-vit-large-patch14 (SD3.5-M text_encoder, FLUX.1-dev text_encoder): the text tower
CLIP_L_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12}
CLIP_L_PROJECTION_DIM = 768
# stabilityai/stable-diffusion-3.5-medium text_encoder_2/config.json (OpenCLIP bigG text tower)
CLIP_G_TEXT = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32}
CLIP_G_PROJECTION_DIM = 1280
# google/t5-v1_1-xxl (SD3.5-M text_encoder_3, FLUX.1-dev text_encoder_2); google/umt5-xxl (Wan text_encoder)
T5_XXL = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64, "num_layers": 24}
T5_XXL_FF = "gated-gelu"
# Qwen/Qwen3-VL-8B-Instruct config.json
QWEN3_VL_8B_TEXT = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
}
QWEN3_VL_8B_MROPE = {"rope_theta": 5000000, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
QWEN3_VL_8B_VISION = {
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "out_hidden_size": 4096,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [8, 16, 24],
}
# Qwen/Qwen3-VL-8B-Instruct preprocessor_config.json
QWEN3_VL_PROCESSOR = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
# Qwen/Qwen2.5-VL-7B-Instruct config.json
QWEN25_VL_7B_TEXT = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
}
QWEN25_VL_7B_MROPE = {"rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
QWEN25_VL_7B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "hidden_act": "silu",
    "patch_size": 14,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "out_hidden_size": 3584,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
# Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json (min_pixels 3136, max_pixels 12845056)
QWEN25_VL_PROCESSOR = {
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 3136, "longest_edge": 12845056},
}
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K config.json
CLIP_H14_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24}
CLIP_H14_VISION = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "image_size": 224,
}
CLIP_H14_PROJECTION_DIM = 1024


def same_except(built: dict, published: dict, cut: set[str]) -> None:
    """Every published field equals the built one, except the declared cuts."""
    wrong = {k: (built.get(k), v) for k, v in published.items() if k not in cut and _plain(built.get(k)) != v}
    assert not wrong, f"built != published: {wrong}"


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def diffusers_config(cls_name: str, config: dict) -> dict:
    import diffusers

    with init_empty_weights(include_buffers=True):  # (SD3.5's position table alone is 0.9 GB)
        return dict(getattr(diffusers, cls_name)(**config).config)


def test_sd35_medium_builder_is_the_published_architecture():
    built = diffusers_config("SD3Transformer2DModel", rs.sd35_medium_transformer_config())
    same_except(built, SD35_MEDIUM_TRANSFORMER, {"num_layers", "dual_attention_layers"})
    assert built["num_layers"] == 2 and built["dual_attention_layers"] == [0]  # both block kinds kept
    same_except(diffusers_config("AutoencoderKL", rs.SD35_VAE_CONFIG), SD35_VAE, set())


def test_flux_dev_builder_is_the_published_architecture():
    built = diffusers_config("FluxTransformer2DModel", rs.flux_dev_transformer_config())
    same_except(built, FLUX_DEV_TRANSFORMER, {"num_layers", "num_single_layers"})
    same_except(diffusers_config("AutoencoderKL", rs.FLUX_DEV_VAE_CONFIG), FLUX_DEV_VAE, set())
    assert rs.FLUX_DEV_SCHEDULER_CONFIG["use_dynamic_shifting"] is True


def test_wan21_builder_is_the_published_architecture():
    built = diffusers_config("WanTransformer3DModel", rs.wan21_transformer_config())
    same_except(built, WAN21_T2V_13B_TRANSFORMER, {"num_layers"})
    vae = diffusers_config("AutoencoderKLWan", rs.WAN21_VAE_CONFIG)
    same_except(vae, WAN21_VAE, set())
    assert list(vae["temperal_downsample"]) == WAN21_VAE_TEMPORAL_DOWNSAMPLE


@pytest.mark.parametrize(
    "published, expected, projection",
    [
        (rs.CLIP_L_TEXT_CONFIG, CLIP_L_TEXT, CLIP_L_PROJECTION_DIM),
        (rs.CLIP_G_TEXT_CONFIG, CLIP_G_TEXT, CLIP_G_PROJECTION_DIM),
    ],
)
def test_clip_text_encoders_are_the_published_towers(published, expected, projection):
    from actors.tiny_models import build_tokenizer

    config = rs.clip_text_config(published, build_tokenizer()).to_dict()
    same_except(config, expected, {"num_hidden_layers"})
    assert config["projection_dim"] == projection and config["max_position_embeddings"] == 77


@pytest.mark.parametrize("config_cls, published", [("T5Config", rs.T5_XXL_CONFIG), ("UMT5Config", rs.UMT5_XXL_CONFIG)])
def test_t5_encoders_are_the_published_xxl(config_cls, published):
    from actors.tiny_models import build_tokenizer

    config = rs.t5_config(config_cls, published, build_tokenizer()).to_dict()
    same_except(config, T5_XXL, {"num_layers"})
    assert config["feed_forward_proj"] == T5_XXL_FF and config["is_gated_act"]


def test_qwen3_vl_judge_is_the_published_architecture_and_processor():
    from reward_workers.tiny_judge import SPECIAL_TOKENS

    config = rj.qwen3_vl_8b_config(600, {t: i for i, t in enumerate(SPECIAL_TOKENS)})
    text, vision = config.text_config.to_dict(), config.vision_config.to_dict()
    same_except(text, QWEN3_VL_8B_TEXT, {"num_hidden_layers"})
    same_except(text["rope_parameters"], QWEN3_VL_8B_MROPE, set())
    same_except(vision, QWEN3_VL_8B_VISION, {"depth", "deepstack_visual_indexes"})
    assert len(vision["deepstack_visual_indexes"]) == len(QWEN3_VL_8B_VISION["deepstack_visual_indexes"])
    assert config.tie_word_embeddings is False
    same_except(rj.qwen3_vl_image_processor().to_dict(), QWEN3_VL_PROCESSOR, set())
    same_except(rj.qwen25_vl_image_processor().to_dict(), QWEN25_VL_PROCESSOR, set())


def test_qwen25_vl_judge_is_the_published_architecture():
    from reward_workers.tiny_judge import SPECIAL_TOKENS

    config = rj.qwen25_vl_7b_config(600, {t: i for i, t in enumerate(SPECIAL_TOKENS)})
    text, vision = config.text_config.to_dict(), config.vision_config.to_dict()
    same_except(text, QWEN25_VL_7B_TEXT, {"num_hidden_layers"})
    same_except(text["rope_parameters"], QWEN25_VL_7B_MROPE, set())
    same_except(vision, QWEN25_VL_7B_VISION, {"depth", "fullatt_block_indexes"})


def test_clip_score_model_is_the_published_vit_h14():
    config = rj.clip_vit_h14_config()
    same_except(config.text_config.to_dict(), CLIP_H14_TEXT, {"num_hidden_layers"})
    same_except(config.vision_config.to_dict(), CLIP_H14_VISION, {"num_hidden_layers"})
    assert config.projection_dim == CLIP_H14_PROJECTION_DIM


def test_the_published_facts_in_the_builders_are_the_hub_configs():
    """The full-depth values the builders keep (what a GPU run at full depth uses) are the published ones."""
    same_except(rs.SD35_MEDIUM_TRANSFORMER_CONFIG, SD35_MEDIUM_TRANSFORMER, set())
    same_except(rs.FLUX_DEV_TRANSFORMER_CONFIG, FLUX_DEV_TRANSFORMER, set())
    same_except(rs.WAN21_T2V_13B_TRANSFORMER_CONFIG, WAN21_T2V_13B_TRANSFORMER, set())
    same_except(rs.T5_XXL_CONFIG, T5_XXL, set())
    same_except(rj.QWEN3_VL_8B_TEXT_CONFIG, QWEN3_VL_8B_TEXT, set())
    same_except(rj.QWEN3_VL_8B_VISION_CONFIG, QWEN3_VL_8B_VISION, set())
    same_except(rj.QWEN25_VL_7B_VISION_CONFIG, QWEN25_VL_7B_VISION, set())
    same_except(rj.CLIP_VIT_H14_VISION_CONFIG, CLIP_H14_VISION, set())


def test_full_depth_builds_are_the_published_architectures_exactly():
    """What scripts/gpu_check.sh builds: no cut but the vocabulary."""
    from actors.tiny_models import build_tokenizer
    from reward_workers.tiny_judge import SPECIAL_TOKENS

    tr = diffusers_config("SD3Transformer2DModel", rs.sd35_medium_transformer_config(full_depth=True))
    same_except(tr, SD35_MEDIUM_TRANSFORMER, set())
    tr = diffusers_config("FluxTransformer2DModel", rs.flux_dev_transformer_config(full_depth=True))
    same_except(tr, FLUX_DEV_TRANSFORMER, set())
    tr = diffusers_config("WanTransformer3DModel", rs.wan21_transformer_config(full_depth=True))
    same_except(tr, WAN21_T2V_13B_TRANSFORMER, set())
    same_except(rs.t5_config("T5Config", rs.T5_XXL_CONFIG, build_tokenizer(), full_depth=True).to_dict(), T5_XXL, set())
    clip_g = rs.clip_text_config(rs.CLIP_G_TEXT_CONFIG, build_tokenizer(), full_depth=True).to_dict()
    same_except(clip_g, CLIP_G_TEXT, set())
    judge = rj.qwen3_vl_8b_config(600, {t: i for i, t in enumerate(SPECIAL_TOKENS)}, full_depth=True)
    same_except(judge.text_config.to_dict(), QWEN3_VL_8B_TEXT, set())
    same_except(judge.vision_config.to_dict(), QWEN3_VL_8B_VISION, set())
    same_except(rj.clip_vit_h14_config(full_depth=True).vision_config.to_dict(), CLIP_H14_VISION, set())

"""The real recipes' judges and CLIP scorer at their real shapes, built offline with random weights.

Each `*_CONFIG` is a published config (the hub model named beside it), written down as facts. The builders
keep widths, heads, KV heads, rope settings, the vision tower's shape and the image processor's settings (which
decide how many tokens an image costs) as published; they cut depth (`DEPTH`) and the vocabulary: the
tokenizer is the tiny judge's byte-level BPE with the Qwen special tokens (no tokenizer file can be
downloaded), so the embedding tables have its size, and text token counts differ from the real tokenizer's.
The chat template renders the judges' conversations (one user turn of images then text, no system turn) the
way Qwen3-VL's does; the published template's tool and reasoning branches are not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from flexgrpo.model_cache import built_in_bf16, cached_build

# Qwen/Qwen3-VL-8B-Instruct config.json (Qwen3VLForConditionalGeneration), the base of
# CodeGoat24/UnifiedReward-Flex-qwen3vl-8b.
QWEN3_VL_8B_TEXT_CONFIG = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
    "attention_bias": False,
    "vocab_size": 151936,
}
QWEN3_VL_8B_VISION_CONFIG = {
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "in_channels": 3,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "out_hidden_size": 4096,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [8, 16, 24],
}
QWEN3_VL_8B_TIE_WORD_EMBEDDINGS = False
# Qwen/Qwen3-VL-8B-Instruct preprocessor_config.json: 16 px patches, 2x2 merge (one token per 32x32 px),
# images resized to between 256x256 and 4096x4096 pixels' worth, mean/std 0.5.
QWEN3_VL_IMAGE_PROCESSOR_CONFIG = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
# Qwen/Qwen2.5-VL-7B-Instruct config.json, the base of UnifiedReward-Think / UnifiedReward-2.0 qwen 7b judges.
QWEN25_VL_7B_TEXT_CONFIG = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
QWEN25_VL_7B_VISION_CONFIG = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "hidden_act": "silu",
    "in_channels": 3,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "out_hidden_size": 3584,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
# Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json: 14 px patches, 2x2 merge (one token per 28x28 px).
QWEN25_VL_IMAGE_PROCESSOR_CONFIG = {
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 3136, "longest_edge": 12845056},  # min_pixels, max_pixels
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K config.json (CLIPModel), the clip_score model of
# configs/sd35_medium_flex_clip.yaml.
CLIP_VIT_H14_TEXT_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "vocab_size": 49408,
}
CLIP_VIT_H14_VISION_CONFIG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "image_size": 224,
    "hidden_act": "gelu",
}
CLIP_VIT_H14_PROJECTION_DIM = 1024

DEPTH = {
    "qwen_text_layers": 1,
    "qwen3_vision_depth": 3,
    "qwen3_deepstack_visual_indexes": [0, 1, 2],  # three deepstack levels as published, one per kept block
    "qwen25_vision_depth": 2,
    "qwen25_fullatt_block_indexes": [1],  # one windowed block, one full-attention block
    "clip_layers": 1,
}
FULL_DEPTH = {  # the published depths (GPU machines, scripts/gpu_check.sh): only the vocabulary stays cut
    "qwen_text_layers": QWEN3_VL_8B_TEXT_CONFIG["num_hidden_layers"],
    "qwen3_vision_depth": QWEN3_VL_8B_VISION_CONFIG["depth"],
    "qwen3_deepstack_visual_indexes": QWEN3_VL_8B_VISION_CONFIG["deepstack_visual_indexes"],
    "clip_layers": None,  # each tower's own
}
_MARKER = ".built-real-v1"


def qwen3_vl_8b_config(vocab_size: int, ids: dict[str, int], full_depth: bool = False):
    """Qwen3-VL-8B's config at the cut (or full) depth, with the tokenizer's vocabulary and special-token ids."""
    from transformers import Qwen3VLConfig

    d = FULL_DEPTH if full_depth else DEPTH
    text = QWEN3_VL_8B_TEXT_CONFIG | {"num_hidden_layers": d["qwen_text_layers"], "vocab_size": vocab_size}
    vision = QWEN3_VL_8B_VISION_CONFIG | {
        "depth": d["qwen3_vision_depth"],
        "deepstack_visual_indexes": d["qwen3_deepstack_visual_indexes"],
    }
    text |= {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=QWEN3_VL_8B_TIE_WORD_EMBEDDINGS,
    )


def qwen25_vl_7b_config(vocab_size: int, ids: dict[str, int]):
    """Qwen2.5-VL-7B's config at the cut depth, with the tokenizer's vocabulary and special-token ids."""
    from transformers import Qwen2_5_VLConfig

    text = QWEN25_VL_7B_TEXT_CONFIG | {"num_hidden_layers": DEPTH["qwen_text_layers"], "vocab_size": vocab_size}
    vision = QWEN25_VL_7B_VISION_CONFIG | {
        "depth": DEPTH["qwen25_vision_depth"],
        "fullatt_block_indexes": DEPTH["qwen25_fullatt_block_indexes"],
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def qwen3_vl_image_processor():
    """Qwen3-VL's image processor with its published settings."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(**QWEN3_VL_IMAGE_PROCESSOR_CONFIG)


def qwen25_vl_image_processor():
    """Qwen2.5-VL's image processor with its published settings."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(**QWEN25_VL_IMAGE_PROCESSOR_CONFIG)


def build_qwen3_vl_8b_judge(path: Path, full_depth: bool = False) -> None:
    """A Qwen3-VL-8B-shaped judge folder (config, weights, tokenizer, processor, chat template) for vLLM."""
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    from reward_workers.tiny_judge import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(qwen3_vl_8b_config(len(tokenizer), ids, full_depth)).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    video = {k: QWEN3_VL_IMAGE_PROCESSOR_CONFIG[k] for k in ("patch_size", "temporal_patch_size", "merge_size")}
    processor = Qwen3VLProcessor(
        image_processor=qwen3_vl_image_processor(),
        video_processor=Qwen3VLVideoProcessor(**video),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / _MARKER).touch()


def clip_vit_h14_config(tokenizer=None, full_depth: bool = False):
    """laion CLIP ViT-H/14's config at the cut (or full) depth; with a tokenizer, its vocabulary and tokens."""
    from transformers import CLIPConfig

    layers = (FULL_DEPTH if full_depth else DEPTH)["clip_layers"]
    text = CLIP_VIT_H14_TEXT_CONFIG | {"num_hidden_layers": layers or CLIP_VIT_H14_TEXT_CONFIG["num_hidden_layers"]}
    if tokenizer is not None:
        text |= {
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    return CLIPConfig(
        text_config=text,
        vision_config=CLIP_VIT_H14_VISION_CONFIG
        | {"num_hidden_layers": layers or CLIP_VIT_H14_VISION_CONFIG["num_hidden_layers"]},
        projection_dim=CLIP_VIT_H14_PROJECTION_DIM,
    )


def build_clip_vit_h14(path: Path, full_depth: bool = False) -> None:
    """A CLIP ViT-H/14-shaped CLIPModel folder with tokenizer and the 224 px CLIP image processor (clip_score)."""
    from transformers import CLIPImageProcessor, CLIPModel

    from actors.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    CLIPModel(clip_vit_h14_config(tokenizer, full_depth)).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    size = CLIP_VIT_H14_VISION_CONFIG["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    (path / _MARKER).touch()


REAL_SHAPE_JUDGES: dict[str, Callable[..., None]] = {
    "real-shape-qwen3-vl-8b-judge": build_qwen3_vl_8b_judge,  # CodeGoat24/UnifiedReward-Flex-qwen3vl-8b
    "real-shape-clip-vit-h-14": build_clip_vit_h14,  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K
}


def real_shape_judge_path(name: str, full_depth: bool = False) -> Path:
    """The cached folder of a real-shape judge or CLIP scorer, built on first use (full depth: in bf16)."""
    if name not in REAL_SHAPE_JUDGES:
        raise ValueError(f"unknown real-shape judge {name!r}; known: {sorted(REAL_SHAPE_JUDGES)}")
    if not full_depth:
        return cached_build(name, REAL_SHAPE_JUDGES[name], _MARKER)
    return cached_build(f"{name}-full-depth", partial(built_in_bf16, REAL_SHAPE_JUDGES[name]), _MARKER)

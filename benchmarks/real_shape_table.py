"""What each real recipe costs at real width: tokens per judge request, transformer parameters per block, and the
memory per role at full depth (what a user provisions per GPU). No weights are made: models are built on the
meta device from the published configs in actors/real_shapes.py and reward_workers/real_shape_judges.py.

    python benchmarks/real_shape_table.py

Tokens: one Flex request (the authors' template, verbatim, with a 10-word prompt; the two samples' images, or
8 frames of each video, at the recipe's resolution) rendered with the judge's chat template and processed by
the Qwen3-VL image processor with its published settings. Image tokens are exact. Text tokens are counted with
the tokenizer built here (a 600-entry byte-level BPE), which splits English into more pieces than Qwen's
151k-entry vocabulary: they are an upper bound. Memory: weights in the recipe's dtype (bf16) at full depth and
full vocabulary; the learner holds the transformer and the VAE, no text encoder (it re-scores the recorded
prompt embeddings), and adds the LoRA's fp32 master weights, gradients and two Adam moments; the judge adds its
KV cache for one request of prompt + max_new_tokens. Activations and the CUDA context are not included.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from accelerate import init_empty_weights
from PIL import Image

from actors import real_shapes as rs
from actors.policies.base import TEXT_PARTS
from flexgrpo.compat import ensure_torchvision_importable
from flexgrpo.config import LoraConfig, load_config
from reward_workers import real_shape_judges as rj

GIB = 1024**3
BF16 = 2
RECIPES = ["sd35_medium_flex", "sd35_medium_flex_clip", "flux_dev_flex", "wan21_t2v_flex"]
PROMPT = "a red fox sitting in a snowy forest at dawn, cinematic lighting"


def numel(module: torch.nn.Module) -> int:
    """Parameters and buffers (SD3's positional table is a buffer)."""
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def lora_params(transformer: torch.nn.Module, rank: int) -> int:
    targets = LoraConfig().target_modules
    return sum(
        rank * (m.in_features + m.out_features)
        for n, m in transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and any(n.endswith("." + t) for t in targets)
    )


def policy_models(family: str) -> tuple[torch.nn.Module, list[torch.nn.Module], dict[str, torch.nn.Module]]:
    """(full-depth transformer, its distinct block kinds, the other pipeline parts by their diffusers names) on the
    meta device."""
    import diffusers
    import transformers

    clip_config, clip_with_projection = transformers.CLIPTextConfig, transformers.CLIPTextModelWithProjection
    with init_empty_weights():
        if family == "sd3":
            tr = diffusers.SD3Transformer2DModel(**rs.SD35_MEDIUM_TRANSFORMER_CONFIG)
            blocks = [tr.transformer_blocks[0], tr.transformer_blocks[-1]]  # with and without dual attention
            parts = {
                "text_encoder": clip_with_projection(clip_config(**rs.CLIP_L_TEXT_CONFIG)),
                "text_encoder_2": clip_with_projection(clip_config(**rs.CLIP_G_TEXT_CONFIG)),
                "text_encoder_3": transformers.T5EncoderModel(transformers.T5Config(**rs.T5_XXL_CONFIG)),
                "vae": diffusers.AutoencoderKL(**rs.SD35_VAE_CONFIG),
            }
        elif family == "flux":
            tr = diffusers.FluxTransformer2DModel(**rs.FLUX_DEV_TRANSFORMER_CONFIG)
            blocks = [tr.transformer_blocks[0], tr.single_transformer_blocks[0]]
            parts = {
                "text_encoder": transformers.CLIPTextModel(clip_config(**rs.CLIP_L_TEXT_CONFIG)),
                "text_encoder_2": transformers.T5EncoderModel(transformers.T5Config(**rs.T5_XXL_CONFIG)),
                "vae": diffusers.AutoencoderKL(**rs.FLUX_DEV_VAE_CONFIG),
            }
        else:
            tr = diffusers.WanTransformer3DModel(**rs.WAN21_T2V_13B_TRANSFORMER_CONFIG)
            blocks = [tr.blocks[0]]
            parts = {
                "text_encoder": transformers.UMT5EncoderModel(transformers.UMT5Config(**rs.UMT5_XXL_CONFIG)),
                "vae": diffusers.AutoencoderKLWan(**rs.WAN21_VAE_CONFIG),
            }
    for part in parts.values():  # meta-device init leaves T5's input embedding untied from `shared`
        if isinstance(part, transformers.PreTrainedModel):
            part.tie_weights()
    return tr, blocks, parts


def judge_params() -> tuple[int, int]:
    """(Qwen3-VL-8B parameters at full depth and vocabulary, KV-cache bytes per token in bf16)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = rj.QWEN3_VL_8B_TEXT_CONFIG
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=rj.QWEN3_VL_8B_VISION_CONFIG,
        tie_word_embeddings=rj.QWEN3_VL_8B_TIE_WORD_EMBEDDINGS,
    )
    with init_empty_weights():
        model = Qwen3VLForConditionalGeneration(config)
    kv = 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * text["head_dim"] * BF16
    return numel(model), kv


def request_tokens(cfg) -> tuple[int, int]:
    """(text tokens, image tokens) of one Flex pair request at the recipe's resolution."""
    from transformers import AutoProcessor

    from reward_workers.judge_prompts import render

    video = cfg.policy.family == "wan"
    per_sample = cfg.rewards[0].video_frames if video else 1
    image = Image.fromarray(np.zeros((cfg.policy.height, cfg.policy.width, 3), np.uint8))
    images = [image] * (2 * per_sample)
    processor = AutoProcessor.from_pretrained(rj.real_shape_judge_path("real-shape-qwen3-vl-8b-judge"))
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": render("flex", video, PROMPT)}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    ids = processor(text=[text], images=images, return_tensors="pt")["input_ids"][0]
    image_tokens = int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    return len(ids) - image_tokens, image_tokens


def rows() -> list[list[str]]:
    judge, kv_per_token = judge_params()
    table = []
    for recipe in RECIPES:
        cfg = load_config(f"configs/{recipe}.yaml", [])
        tr, blocks, parts = policy_models(cfg.policy.family)
        text_tokens, image_tokens = request_tokens(cfg)
        max_tokens = cfg.rewards[0].max_new_tokens
        policy_bytes = (numel(tr) + sum(numel(p) for p in parts.values())) * BF16
        lora = lora_params(tr, cfg.policy.lora.rank)
        learned = [p for name, p in parts.items() if not name.startswith(TEXT_PARTS)]  # what a learner loads
        learner_bytes = (numel(tr) + sum(map(numel, learned))) * BF16 + lora * 4 * 4  # fp32 master, grad, Adam m, v
        judge_bytes = judge * BF16 + (text_tokens + image_tokens + max_tokens) * kv_per_token
        table.append(
            [
                recipe,
                f"{text_tokens:,} + {image_tokens:,}",
                " / ".join(f"{numel(b) / 1e6:.1f}M" for b in blocks),
                f"{numel(tr) / 1e9:.2f}B",
                f"{policy_bytes / GIB:.1f}",
                f"{learner_bytes / GIB:.1f} (LoRA {lora / 1e6:.1f}M)",
                f"{judge_bytes / GIB:.1f}",
            ]
        )
    return table


HEADER = [
    "recipe",
    "judge request tokens (text + images)",
    "params per block",
    "transformer",
    "rollout GiB",
    "learner GiB",
    "judge GiB",
]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    ensure_torchvision_importable()
    print("| " + " | ".join(HEADER) + " |")
    print("|" + " --- |" * len(HEADER))
    for row in rows():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

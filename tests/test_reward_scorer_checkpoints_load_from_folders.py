"""The tiny scorers are folders in their real checkpoints' layout, loaded by the same code from any path; the
tokenizer and image processor can come from another folder (`processor:`, as PickScore's do); a model path that
is neither a folder nor a hub id fails in one line naming the reward and the path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from flexgrpo.config import ConfigError, RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers import aesthetic, image_reward
from reward_workers.registry import build_reward
from reward_workers.tiny_scorers import TINY_SCORERS

NAMES = {"pickscore": "tiny-pickscore", "hpsv2": "tiny-hpsv2", "aesthetic": "tiny-aesthetic"}
NAMES["image_reward"] = "tiny-image-reward"
HEADS = {"aesthetic": aesthetic.HEAD_FILE, "image_reward": image_reward.HEAD_FILE}
PUBLISHED_HEAD_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")


def sample_group() -> MediaGroup:
    media = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    return MediaGroup(group_id="g", prompt="a green tree", policy_version=0, media=media)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_tiny_build_loads_from_its_folder_like_a_checkpoint(name: str, tmp_path: Path) -> None:
    TINY_SCORERS[NAMES[name]](tmp_path)  # the same build, written to a plain folder
    files = {f.name for f in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", *PROCESSOR_FILES} <= files
    if name in HEADS:
        assert set(torch.load(tmp_path / HEADS[name], weights_only=True)) == PUBLISHED_HEAD_KEYS
    from_folder = build_reward(RewardSpec(name=name, model=str(tmp_path))).score(sample_group()).rewards
    from_cache = build_reward(RewardSpec(name=name, model=NAMES[name])).score(sample_group()).rewards
    torch.testing.assert_close(from_folder, from_cache, rtol=0, atol=0)


def test_the_processor_can_come_from_another_folder(tmp_path: Path) -> None:
    model, processor = tmp_path / "model", tmp_path / "processor"
    TINY_SCORERS["tiny-pickscore"](model)
    processor.mkdir()
    for name in PROCESSOR_FILES:
        shutil.move(model / name, processor / name)
    with pytest.raises(OSError):  # the model folder alone has no tokenizer
        build_reward(RewardSpec(name="pickscore", model=str(model)))
    scores = build_reward(RewardSpec(name="pickscore", model=str(model), processor=str(processor)))
    expected = build_reward(RewardSpec(name="pickscore", model="tiny-pickscore"))
    torch.testing.assert_close(scores.score(sample_group()).rewards, expected.score(sample_group()).rewards)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_missing_model_folder_fails_in_one_line_naming_reward_and_path(name: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} model '/nonexistent/{name}' is not a folder that exists") as err:
        build_reward(RewardSpec(name=name, model=f"/nonexistent/{name}"))
    assert "\n" not in str(err.value)


def test_a_folder_without_the_head_weights_names_the_file(tmp_path: Path) -> None:
    TINY_SCORERS["tiny-aesthetic"](tmp_path)
    (tmp_path / aesthetic.HEAD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no sac\\+logos\\+ava1-l14-linearMSE.pth"):
        build_reward(RewardSpec(name="aesthetic", model=str(tmp_path)))


ORIGINAL_VISION = {  # transformers' BlipVisionModel name -> BLIP's ViT name in ImageReward.pt, written out
    "embeddings.class_embedding": "cls_token",
    "embeddings.position_embedding": "pos_embed",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
}
ORIGINAL_BLOCK = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.qkv": "attn.qkv"}
ORIGINAL_BLOCK |= {"self_attn.projection": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def original_name(name: str) -> str:
    if name.startswith("vision_model.encoder.layers."):
        index, module, kind = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name).groups()
        return f"blip.visual_encoder.blocks.{index}.{ORIGINAL_BLOCK[module]}.{kind}"
    if name.startswith("vision_model."):
        return "blip.visual_encoder." + ORIGINAL_VISION[name.removeprefix("vision_model.")]
    return "blip." + name  # text_encoder.* keeps its names; vision_proj, text_proj, itm_head are dropped


def test_the_authors_checkpoint_converts_to_the_folder_layout(tmp_path: Path) -> None:
    """A tiny model written with BLIP's own module names (as THUDM's ImageReward.pt is) converts to a folder that
    scores exactly as the tiny folder it came from; a checkpoint that lacks a weight fails naming it."""
    from transformers import AutoConfig, BlipForImageTextRetrieval

    source = tmp_path / "source"
    TINY_SCORERS["tiny-image-reward"](source)
    model = BlipForImageTextRetrieval.from_pretrained(source)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # every weight distinct (a fresh LayerNorm is all ones), so a swapped name shows
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(source)
    blip = model.state_dict()
    head = torch.load(source / image_reward.HEAD_FILE, weights_only=True)
    state = {original_name(k): v for k, v in blip.items()} | {f"mlp.{k}": v for k, v in head.items()}

    def convert(out: str) -> str:
        torch.save(state, tmp_path / "ImageReward.pt")
        config = AutoConfig.from_pretrained(source)
        image_reward.convert_checkpoint(str(tmp_path / "ImageReward.pt"), str(tmp_path / out), str(source), config)
        return str(tmp_path / out)

    def scores(folder: str) -> torch.Tensor:
        spec = RewardSpec(name="image_reward", model=folder, processor=str(source))  # the tiny 32 px processor
        return build_reward(spec).score(sample_group()).rewards

    torch.testing.assert_close(scores(convert("out")), scores(str(source)), rtol=0, atol=0)
    del state["blip.visual_encoder.blocks.1.attn.qkv.weight"]
    with pytest.raises(ValueError, match=r"lacks 1 BLIP weights.*vision_model\.encoder\.layers\.1\.self_attn\.qkv"):
        convert("bad")

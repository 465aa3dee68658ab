"""The tiny scorers are folders in their real checkpoints' layout, loaded by the same code from any path; the
tokenizer and image processor can come from another folder (`processor:`, as PickScore's do); a model path that
is neither a folder nor a hub id fails in one line naming the reward and the path."""

from __future__ import annotations

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

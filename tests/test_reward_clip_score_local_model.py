"""clip_score loads a CLIP model from a local folder and scores images and videos by cosine similarity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flexgrpo.config import ConfigError, RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.registry import build_reward, check_reward_specs
from reward_workers.tiny_scorers import build_tiny_clip


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel with its tokenizer and image processor, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-clip")
    build_tiny_clip(path, seed=0)
    return path


def media(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_clip_score_of_images(clip_path: Path) -> None:
    reward = build_reward(RewardSpec(name="clip_score", model=str(clip_path)))
    images = media((3, 48, 48, 3))
    images[2] = images[0]
    group = MediaGroup(group_id="g", prompt="a red cat", policy_version=0, media=images)
    out = reward.score(group)
    assert out.rewards.shape == (3,) and out.rewards.dtype == torch.float32
    assert ((out.rewards >= -1) & (out.rewards <= 1)).all()
    assert out.rewards[0] == pytest.approx(out.rewards[2].item())  # same image, same score
    assert out.rewards[0] != pytest.approx(out.rewards[1].item())
    torch.testing.assert_close(reward.score(group).rewards, out.rewards)  # deterministic
    other_prompt = reward.score(MediaGroup(group_id="g", prompt="a blue tree house", policy_version=0, media=images))
    assert not torch.allclose(other_prompt.rewards, out.rewards)
    reward.close()


def test_clip_score_of_videos_is_the_mean_over_frames(clip_path: Path) -> None:
    reward = build_reward(RewardSpec(name="clip_score", model=str(clip_path), video_frames=4))
    images = media((2, 32, 32, 3), seed=1)
    still = images[:, None].expand(2, 6, 32, 32, 3).contiguous()  # a video whose frames never change
    prompt = "a dog on the sea"
    video_scores = reward.score(MediaGroup(group_id="v", prompt=prompt, policy_version=0, media=still)).rewards
    image_scores = reward.score(MediaGroup(group_id="i", prompt=prompt, policy_version=0, media=images)).rewards
    torch.testing.assert_close(video_scores, image_scores)
    reward.close()


def test_clip_score_needs_a_model() -> None:
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.model is required for clip_score"):
        check_reward_specs([RewardSpec(name="clip_score")])

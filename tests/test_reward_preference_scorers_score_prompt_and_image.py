"""PickScore, HPSv2 and ImageReward score a sample from its prompt and its image together, the aesthetic
predictor from the image alone; all are deterministic, and PickScore is HPSv2's / clip_score's cosine times the
model's exp(logit_scale)."""

from __future__ import annotations

import pytest
import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.registry import build_reward

TINY = {"pickscore": "tiny-pickscore", "hpsv2": "tiny-hpsv2", "aesthetic": "tiny-aesthetic"}
TINY["image_reward"] = "tiny-image-reward"


def group(prompt: str, seed: int = 0) -> MediaGroup:
    """Three 48 px images, the third a copy of the first."""
    media = torch.randint(0, 256, (3, 48, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    media[2] = media[0]
    return MediaGroup(group_id="g", prompt=prompt, policy_version=0, media=media)


@pytest.mark.parametrize("name", sorted(TINY))
def test_scores_follow_the_image_and_are_deterministic(name: str) -> None:
    reward = build_reward(RewardSpec(name=name, model=TINY[name]))
    scores = reward.score(group("a red cat")).rewards
    assert scores.shape == (3,) and scores.dtype == torch.float32 and scores.isfinite().all()
    assert scores[0] == scores[2], "the same image scores the same"
    assert scores[0] != pytest.approx(scores[1].item()), "another image scores otherwise"
    torch.testing.assert_close(reward.score(group("a red cat")).rewards, scores, rtol=0, atol=0)
    assert [o.rewards.tolist() for o in reward.score_many([group("a red cat")] * 2)] == [scores.tolist()] * 2
    reward.close()


@pytest.mark.parametrize("name", ["hpsv2", "image_reward", "pickscore"])
def test_preference_scores_follow_the_prompt(name: str) -> None:
    reward = build_reward(RewardSpec(name=name, model=TINY[name]))
    scores = reward.score(group("a red cat")).rewards
    other = reward.score(group("a big blue house by the sea")).rewards
    assert (scores - other).abs().min() > 0, "every sample's score moves with the prompt"
    reward.close()


def test_aesthetic_ignores_the_prompt() -> None:
    reward = build_reward(RewardSpec(name="aesthetic", model="tiny-aesthetic"))
    torch.testing.assert_close(
        reward.score(group("a red cat")).rewards, reward.score(group("a big blue house")).rewards, rtol=0, atol=0
    )
    reward.close()


def test_pickscore_is_the_cosine_times_the_learned_logit_scale() -> None:
    pick = build_reward(RewardSpec(name="pickscore", model="tiny-pickscore"))
    cosine = build_reward(RewardSpec(name="clip_score", model="tiny-pickscore"))
    hps = build_reward(RewardSpec(name="hpsv2", model="tiny-pickscore"))
    g = group("a dog on the sea")
    scale = pick.clip.model.logit_scale.exp().item()  # type: ignore[attr-defined]
    assert scale == pytest.approx(torch.tensor(2.6592).exp().item(), rel=1e-4)  # CLIP's initial logit scale
    torch.testing.assert_close(pick.score(g).rewards, scale * cosine.score(g).rewards)
    torch.testing.assert_close(hps.score(g).rewards, cosine.score(g).rewards, rtol=0, atol=0)
    assert (cosine.score(g).rewards.abs() <= 1).all()


def test_videos_score_the_mean_over_frames() -> None:
    still = group("a red cat").media[:, None].expand(3, 4, 48, 48, 3).contiguous()  # frames that never change
    for name in sorted(TINY):
        reward = build_reward(RewardSpec(name=name, model=TINY[name], video_frames=2))
        video = reward.score(MediaGroup(group_id="v", prompt="a red cat", policy_version=0, media=still)).rewards
        torch.testing.assert_close(video, reward.score(group("a red cat")).rewards)

"""Rewards computed from the pixels alone: JPEG (in)compressibility."""

from __future__ import annotations

import io

import torch
from PIL import Image

from flexgrpo.records import MediaGroup
from reward_workers.base import RewardOutput


def jpeg_size_kb(image: torch.Tensor, quality: int = 95) -> float:
    """Size in kB of one uint8 [H, W, 3] image saved as JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JpegSize:
    """Reward = sign * JPEG size in kB (video: mean over frames). sign -1: compressibility, +1: incompressibility."""

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def score(self, group: MediaGroup) -> RewardOutput:
        frames = group.media if group.is_video else group.media.unsqueeze(1)  # [G, F, H, W, 3]
        sizes = torch.tensor([[jpeg_size_kb(f) for f in sample] for sample in frames]).mean(dim=1)  # [G]
        return RewardOutput(rewards=self.sign * sizes)

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        return [self.score(group) for group in groups]

    def close(self) -> None:
        pass

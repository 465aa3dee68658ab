"""Rewards computed from the pixels alone: JPEG (in)compressibility, and a pairwise judge of JPEG sizes."""

from __future__ import annotations

import io

import torch
from PIL import Image

from flexgrpo.config import RewardSpec
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


class JpegPreference:
    """A pairwise judge without a VLM: in each judged pair (`judge_pairs` of the spec) it prefers the sample whose
    JPEG is smaller (`prefer_smaller`) or larger; equal sizes are a tie. Reward: the group win rate."""

    def __init__(self, spec: RewardSpec, prefer_smaller: bool) -> None:
        self.spec, self.prefer_smaller = spec, prefer_smaller

    def score(self, group: MediaGroup) -> RewardOutput:
        from reward_workers.judge_parse import PairVerdict
        from reward_workers.winrate import Comparison, judge_pairs, win_rates

        sizes = JpegSize(sign=-1.0 if self.prefer_smaller else 1.0).score(group).rewards  # [G] larger is preferred
        pairs = judge_pairs(sizes.numel(), self.spec.pairs_per_sample, self.spec.both_orders)
        verdicts = [
            PairVerdict(winner=None if sizes[i] == sizes[j] else int(sizes[j] > sizes[i]), parsed=True)
            for i, j in pairs
        ]
        decided = [v.winner for v in verdicts if v.winner is not None]
        return RewardOutput(
            rewards=win_rates(sizes.numel(), [Comparison(i, j, v) for (i, j), v in zip(pairs, verdicts, strict=True)]),
            details=[
                {"kind": "pair", "pair": [i, j], "winner": None if v.winner is None else (i, j)[v.winner]}
                for (i, j), v in zip(pairs, verdicts, strict=True)
            ],
            requests=len(pairs),
            first_position_wins=decided.count(0),
            position_decided=len(decided),
        )

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        return [self.score(group) for group in groups]

    def close(self) -> None:
        pass

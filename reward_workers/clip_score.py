"""CLIP-family scores: a CLIP-style model's unit image and text embeddings, and the scores built on them.

`ClipEmbedder` loads a CLIP-style model (transformers `AutoModel` with `get_image_features` /
`get_text_features`) with its tokenizer and image processor, from its own folder or another one. `ClipScore`
is their cosine similarity: `clip_score`, and HPSv2 (its authors score a CLIP ViT-H/14 fine-tune by the plain
cosine of image and text features); with `logit_scale` the cosine times the model's learned exp(logit_scale),
which is PickScore's score. Video: the mean over evenly spaced frames.

Published weights: pickscore `model: yuvalkirstain/PickScore_v1` with `processor:
laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (its authors' processor); hpsv2 a transformers CLIP conversion of the
authors' open_clip checkpoint (e.g. adams-story/HPSv2-hf, of HPS v2) with `processor:
openai/clip-vit-base-patch32` (the plain CLIP tokenizer and 224 px preprocessing HPSv2 uses).
"""

from __future__ import annotations

import numpy as np
import torch

from flexgrpo.records import MediaGroup
from reward_workers.base import RewardOutput
from reward_workers.judges import sample_frames


class ClipEmbedder:
    """A CLIP-style model, its tokenizer and image processor (from `processor`, else the model's folder)."""

    def __init__(self, model: str, processor: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModel.from_pretrained(model).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(processor or model)
        self.image_processor = AutoImageProcessor.from_pretrained(processor or model)

    @torch.no_grad()
    def images(self, frames: list[list[np.ndarray]]) -> torch.Tensor:
        """Unit image embeddings of G samples of F frames each (uint8 [H, W, 3]): [G, F, D] float32."""
        pixels = self.image_processor(images=[f for sample in frames for f in sample], return_tensors="pt")
        image = _embedding(self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)))
        return torch.nn.functional.normalize(image.float(), dim=-1).view(len(frames), len(frames[0]), -1)

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        """The prompt's unit text embedding: [D] float32."""
        inputs = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt").to(self.device)
        return torch.nn.functional.normalize(_embedding(self.model.get_text_features(**inputs)).float(), dim=-1)[0]


class ClipScore:
    """cos(image, text) per sample, mean over video frames; times exp(logit_scale) if `logit_scale`."""

    def __init__(
        self, model: str, video_frames: int = 8, *, processor: str | None = None, logit_scale: bool = False
    ) -> None:
        self.clip: ClipEmbedder | None = ClipEmbedder(model, processor)
        self.video_frames = video_frames
        self.logit_scale = logit_scale

    @torch.no_grad()
    def score(self, group: MediaGroup) -> RewardOutput:
        assert self.clip is not None, "score after close"
        image = self.clip.images(sample_frames(group.media, self.video_frames))  # [G, F, D]
        cosine = (image @ self.clip.text(group.prompt)).mean(dim=1)  # [G]
        scale = self.clip.model.logit_scale.exp().float() if self.logit_scale else 1.0
        return RewardOutput(rewards=(scale * cosine).cpu())

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        return [self.score(group) for group in groups]

    def close(self) -> None:
        self.clip = None


def _embedding(output: object) -> torch.Tensor:
    """transformers 5 returns model outputs from get_*_features; older versions a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[attr-defined]

"""CLIP score: cosine similarity of a sample's image embedding and its prompt's text embedding.

Loads a CLIP-style model (transformers `AutoModel` with `get_image_features` / `get_text_features`) from a
local folder holding its tokenizer and image processor too. Video: the mean over evenly spaced frames.
"""

from __future__ import annotations

import torch

from flexgrpo.records import MediaGroup
from reward_workers.base import RewardOutput
from reward_workers.judges import sample_frames


class ClipScore:
    def __init__(self, model: str, video_frames: int = 8) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModel.from_pretrained(model).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.image_processor = AutoImageProcessor.from_pretrained(model)
        self.video_frames = video_frames

    @torch.no_grad()
    def score(self, group: MediaGroup) -> RewardOutput:
        frames = sample_frames(group.media, self.video_frames)  # G lists of [H, W, 3] uint8
        per_sample = len(frames[0])
        pixels = self.image_processor(images=[f for sample in frames for f in sample], return_tensors="pt")
        image = _embedding(self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)))
        text_inputs = self.tokenizer([group.prompt], padding=True, truncation=True, return_tensors="pt")
        text = _embedding(self.model.get_text_features(**text_inputs.to(self.device)))  # [1, D]
        image = torch.nn.functional.normalize(image.float(), dim=-1)  # [G * F, D]
        text = torch.nn.functional.normalize(text.float(), dim=-1)  # [1, D]
        cosine = (image @ text.T).view(len(frames), per_sample).mean(dim=1)  # [G]
        return RewardOutput(rewards=cosine.cpu())

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        return [self.score(group) for group in groups]

    def close(self) -> None:
        self.model = None


def _embedding(output: object) -> torch.Tensor:
    """transformers 5 returns model outputs from get_*_features; older versions a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[attr-defined]

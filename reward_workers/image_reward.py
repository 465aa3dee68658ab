"""ImageReward (THUDM): BLIP reads the prompt with cross-attention to the image; an MLP scores the result.

The BLIP part is a ViT image encoder (ViT-L/16 at 224 px in the published model) and a BERT text encoder whose
layers cross-attend to the image tokens; the text encoder's first ([CLS]) output feeds the aesthetic
predictor's MLP (reward_workers/aesthetic.py), and the score is normalised by the authors' published mean and
std. The model folder holds a transformers `BlipForImageTextRetrieval` (its vision_model and text_encoder are
used), its BERT tokenizer, an image processor (the authors': 224 px bicubic resize, centre crop, CLIP mean and
std) and the head's weights in HEAD_FILE. Prompts are padded to the authors' 35 tokens.
"""

from __future__ import annotations

import torch

from flexgrpo.records import MediaGroup
from reward_workers.aesthetic import load_head
from reward_workers.base import RewardOutput
from reward_workers.judges import sample_frames

HEAD_FILE = "image_reward_head.pth"
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the authors' normalisation of the raw head output
MAX_TEXT_TOKENS = 35


class ImageReward:
    """The normalised ImageReward score per sample, mean over video frames."""

    def __init__(self, model: str, video_frames: int = 8, *, processor: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.blip: BlipForImageTextRetrieval | None = BlipForImageTextRetrieval.from_pretrained(model)
        self.blip.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(processor or model)
        self.image_processor = AutoImageProcessor.from_pretrained(processor or model)
        self.head = load_head(model, HEAD_FILE, self.blip.config.text_config.hidden_size).to(self.device)
        self.video_frames = video_frames

    @torch.no_grad()
    def score(self, group: MediaGroup) -> RewardOutput:
        assert self.blip is not None, "score after close"
        frames = sample_frames(group.media, self.video_frames)
        pixels = self.image_processor(images=[f for sample in frames for f in sample], return_tensors="pt")
        image = self.blip.vision_model(pixel_values=pixels["pixel_values"].to(self.device)).last_hidden_state
        text = self.tokenizer(
            [group.prompt], padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        ).to(self.device)
        n = image.shape[0]  # G * F images, one copy of the prompt each
        fused = self.blip.text_encoder(
            input_ids=text["input_ids"].expand(n, -1),
            attention_mask=text["attention_mask"].expand(n, -1),
            encoder_hidden_states=image,  # [N, P, D_vision]
            encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long, device=self.device),
        ).last_hidden_state[:, 0]  # [N, D_text]
        raw = self.head(fused.float())  # [N]
        scores = ((raw - MEAN) / STD).view(len(frames), -1).mean(dim=1)  # [G]
        return RewardOutput(rewards=scores.float().cpu())

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        return [self.score(group) for group in groups]

    def close(self) -> None:
        self.blip = None

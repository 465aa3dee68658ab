"""LAION's aesthetic predictor: an MLP over the unit CLIP ViT-L/14 image embedding; the prompt plays no part.

The model folder (or hub id) holds the CLIP model in transformers' layout (openai/clip-vit-large-patch14 for the
published predictor) and the MLP's published weights under their published file name, HEAD_FILE. The MLP is
five linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout (0.2, 0.2, 0.1) between the first four
and no activations (christophschuhmann/improved-aesthetic-predictor); its state-dict keys are the published ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flexgrpo.records import MediaGroup
from reward_workers.base import RewardOutput
from reward_workers.clip_score import ClipEmbedder
from reward_workers.judges import sample_frames

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HIDDEN_SIZES = (1024, 128, 64, 16)  # the published MLP's widths, before its one output


class AestheticMlp(torch.nn.Module):
    """The predictor's MLP (ImageReward's authors reuse it as their head, over BLIP features)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        a, b, c, d = HIDDEN_SIZES
        self.layers = torch.nn.Sequential(  # indices match the published state dict: layers.{0,2,4,6,7}
            torch.nn.Linear(input_size, a),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(a, b),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(b, c),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(c, d),
            torch.nn.Linear(d, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: [N, input_size] -> [N] scores."""
        return self.layers(features).squeeze(-1)


def model_file(model: str, filename: str) -> Path:
    """`filename` inside the model folder, or fetched from the hub id `model`."""
    folder = Path(model)
    if folder.is_dir():
        if not (folder / filename).is_file():
            raise FileNotFoundError(f"{folder} has no {filename}")
        return folder / filename
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model, filename))


def load_head(model: str, filename: str, input_size: int, prefix: str = "") -> AestheticMlp:
    """The MLP head from `filename` (a torch state dict; `prefix` strips a parent module's key prefix)."""
    state = torch.load(model_file(model, filename), map_location="cpu", weights_only=True)
    head = AestheticMlp(input_size)
    head.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    return head.eval()


class Aesthetic:
    """The predicted aesthetic score (about 1-10 for the published weights) per sample, mean over video frames."""

    def __init__(self, model: str, video_frames: int = 8, *, processor: str | None = None) -> None:
        self.clip: ClipEmbedder | None = ClipEmbedder(model, processor)
        dim = self.clip.model.config.projection_dim
        self.head = load_head(model, HEAD_FILE, dim).to(self.clip.device)
        self.video_frames = video_frames

    @torch.no_grad()
    def score(self, group: MediaGroup) -> RewardOutput:
        assert self.clip is not None, "score after close"
        image = self.clip.images(sample_frames(group.media, self.video_frames))  # [G, F, D] unit length
        scores = self.head(image.flatten(0, 1)).view(image.shape[:2]).mean(dim=1)  # [G]
        return RewardOutput(rewards=scores.float().cpu())

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        return [self.score(group) for group in groups]

    def close(self) -> None:
        self.clip = None

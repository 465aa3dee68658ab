"""ImageReward (THUDM): BLIP reads the prompt with cross-attention to the image; an MLP scores the result.

The BLIP part is a ViT image encoder (ViT-L/16 at 224 px in the published model) and a BERT text encoder whose
layers cross-attend to the image tokens; the text encoder's first ([CLS]) output feeds the aesthetic
predictor's MLP (reward_workers/aesthetic.py), and the score is normalised by the authors' published mean and
std. The model folder holds a transformers `BlipForImageTextRetrieval` (its vision_model and text_encoder are
used), its BERT tokenizer, an image processor (the authors': 224 px bicubic resize, centre crop, CLIP mean and
std) and the head's weights in HEAD_FILE. Prompts are padded to the authors' 35 tokens. The authors publish one
file, THUDM/ImageReward's ImageReward.pt (BLIP's own module names); `convert_checkpoint(pt, folder)` writes it
in this layout, with bert-base-uncased's tokenizer.
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


def published_config():
    """The BlipConfig of THUDM's ImageReward: BLIP's ViT-L/16 at 224 px (LayerNorm eps 1e-6) and a BERT-base text
    encoder (12 heads, vocab 30524: BERT's plus BLIP's [DEC] and [ENC]) cross-attending to 1024-wide image tokens."""
    from transformers import BlipConfig

    return BlipConfig(
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 16,
            "layer_norm_eps": 1e-6,
        },
        text_config={
            "vocab_size": 30524,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "encoder_hidden_size": 1024,
            "max_position_embeddings": 512,
            "layer_norm_eps": 1e-12,
        },
    )


_VISION_NAMES = (  # BLIP's ViT module names -> transformers' BlipVisionModel names (prefix `visual_encoder.`)
    ("cls_token", "embeddings.class_embedding"),
    ("pos_embed", "embeddings.position_embedding"),
    ("patch_embed.proj.", "embeddings.patch_embedding."),
    ("norm.", "post_layernorm."),
    ("blocks.", "encoder.layers."),
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    (".attn.qkv.", ".self_attn.qkv."),
    (".attn.proj.", ".self_attn.projection."),
)


def transformers_name(key: str) -> str | None:
    """The transformers BLIP name of an ImageReward.pt BLIP weight (None: a weight the score does not use)."""
    key = key.removeprefix("blip.")
    if key.startswith("text_encoder."):
        return key  # transformers' BLIP text encoder keeps BLIP's BERT names
    if not key.startswith("visual_encoder."):
        return None
    name = key.removeprefix("visual_encoder.")
    if name.startswith("blocks."):
        for old, new in _VISION_NAMES[4:]:
            name = name.replace(old, new)
    else:
        for old, new in _VISION_NAMES[:4]:
            if name.startswith(old):
                name = new + name.removeprefix(old)
                break
    return "vision_model." + name


def convert_checkpoint(checkpoint: str, out: str, tokenizer: str = "bert-base-uncased", config=None) -> None:
    """Write THUDM's ImageReward.pt (and BERT's tokenizer) as the folder this scorer loads; fails naming any
    weight of the image or text encoder that the checkpoint lacks."""
    from transformers import AutoTokenizer, BlipForImageTextRetrieval, CLIPImageProcessor

    from reward_workers.aesthetic import AestheticMlp

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = BlipForImageTextRetrieval(config or published_config()).eval()
    renamed = {transformers_name(k): v for k, v in state.items() if transformers_name(k) is not None}
    missing = model.load_state_dict(renamed, strict=False).missing_keys
    if lacking := [k for k in missing if k.startswith(("vision_model.", "text_encoder."))]:
        raise ValueError(f"{checkpoint} lacks {len(lacking)} BLIP weights, e.g. {lacking[:3]}")
    head = AestheticMlp(model.config.text_config.hidden_size)
    head.load_state_dict({k.removeprefix("mlp."): v for k, v in state.items() if k.startswith("mlp.")})
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    CLIPImageProcessor().save_pretrained(out)  # 224 px bicubic resize, centre crop, CLIP mean and std
    torch.save(head.state_dict(), f"{out}/{HEAD_FILE}")

"""Tiny random scorer checkpoints (PickScore, HPSv2, aesthetic predictor, ImageReward), built offline and cached.

Each is a folder in the layout its real checkpoint has (transformers `save_pretrained` files, the tokenizer, the
image processor, the MLP head's weights file), with the real architecture at toy widths, so the scorers load
them through the same code as the published weights and the tests never touch a hub.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from flexgrpo.model_cache import cached_build

IMAGE_SIZE = 32  # pixels the tiny image processors resize and crop to
_MARKER = ".built-v3"  # bump when a build changes, so cached folders are rebuilt


def _clip_image_processor():
    """The CLIP preprocessing (bicubic resize of the short side, centre crop, CLIP mean and std) at toy size."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _tiny_clip_model(tokenizer, seed: int, projection_dim: int = 16):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",  # ViT-H/14 (PickScore, HPSv2); ViT-L/14 uses quick_gelu
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "hidden_act": "gelu",
        },
        projection_dim=projection_dim,
    )
    return CLIPModel(config).eval()


def build_tiny_clip(path: Path, seed: int) -> None:
    """A CLIPModel with its tokenizer and image processor: the layout of PickScore_v1 and HPSv2-hf."""
    from actors.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    _tiny_clip_model(tokenizer, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    _clip_image_processor().save_pretrained(path)
    (path / _MARKER).touch()


def build_tiny_aesthetic(path: Path) -> None:
    """A CLIP model and the predictor's MLP (published widths) over its projection, saved under the head's name."""
    from actors.tiny_models import build_tokenizer
    from reward_workers.aesthetic import HEAD_FILE, AestheticMlp

    tokenizer = build_tokenizer()
    clip = _tiny_clip_model(tokenizer, seed=13)
    clip.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _clip_image_processor().save_pretrained(path)
    torch.manual_seed(14)
    torch.save(AestheticMlp(clip.config.projection_dim).state_dict(), path / HEAD_FILE)
    (path / _MARKER).touch()


def build_bert_tokenizer():
    """A lower-casing WordPiece tokenizer with BERT's special tokens over a fixed vocabulary (whole words, then
    letters and word-piece letters, so any lower-case ASCII text tokenizes)."""
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(set("a photo of the cat dog red blue green tree house sky sea car on in with and big small".split()))
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = specials + words + [c for c in letters if c not in words] + [f"##{c}" for c in letters]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(s, tok.token_to_id(s)) for s in ("[CLS]", "[SEP]")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512,
    )  # fmt: skip


def build_tiny_image_reward(path: Path) -> None:
    """A BLIP retrieval model (ViT + cross-attending BERT), BERT tokenizer, CLIP preprocessing and the MLP head."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from reward_workers.aesthetic import AestheticMlp
    from reward_workers.image_reward import HEAD_FILE

    tokenizer = build_bert_tokenizer()
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,  # the vision width its cross-attention reads
            "max_position_embeddings": 64,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "initializer_range": 0.02,  # BLIP's default (1e-10) would leave a random tiny model blind to images
        },
        image_text_hidden_size=16,
    )
    torch.manual_seed(21)
    BlipForImageTextRetrieval(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    _clip_image_processor().save_pretrained(path)
    torch.manual_seed(22)
    torch.save(AestheticMlp(config.text_config.hidden_size).state_dict(), path / HEAD_FILE)
    (path / _MARKER).touch()


TINY_SCORERS: dict[str, Callable[[Path], None]] = {
    "tiny-pickscore": partial(build_tiny_clip, seed=11),
    "tiny-hpsv2": partial(build_tiny_clip, seed=12),
    "tiny-aesthetic": build_tiny_aesthetic,
    "tiny-image-reward": build_tiny_image_reward,
}


def tiny_scorer_path(name: str) -> Path:
    """The cached folder of a tiny scorer, built on first use."""
    return cached_build(name, TINY_SCORERS[name], _MARKER)

"""Tiny random diffusion pipelines built offline, on demand, cached and deterministic.

They are real diffusers pipelines (saved with `save_pretrained`, loaded with `from_pretrained`) with random
weights and a small byte-level BPE tokenizer trained here, so tests and the tiny recipe never touch a hub.
`resolve_model(name_or_path)` maps a tiny model name to its cached folder and leaves other paths alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from flexgrpo.model_cache import cached_build

TOKENIZER_WORDS = 64  # distinct words in the tokenizer's training text
MAX_TEXT_TOKENS = 77


def build_tokenizer(max_length: int = MAX_TEXT_TOKENS):
    """A byte-level BPE tokenizer with CLIP-style start/end tokens, trained on a fixed generated text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu"]
    words = [a + b + c for a in syllables for b in syllables for c in syllables[:2]][:TOKENIZER_WORDS]
    english = "a photo of the cat dog red blue green tree house sky sea car on in with and big small".split()
    text = [" ".join(words[i : i + 8] + english) for i in range(0, len(words), 4)]

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[(s, tok.token_to_id(s)) for s in specials]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=max_length,
    )


def _tiny_clip(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TEXT_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config).eval()


def build_tiny_vae(latent_channels: int):
    """An 8x-upsampling AutoencoderTiny whose random decoder shows its latent: the zero latent decodes to flat
    grey, and contrast grows with the latent, as with a trained VAE.

    A default random decoder draws the same texture whatever the latent, so a pixel reward (JPEG size) could
    not be learned through it. Here the decoder's biases are zero (it is then homogeneous in its input) and
    the output layer is calibrated to a std of 0.25 around mid-grey for unit latents. The encoder stays random.
    """
    from diffusers import AutoencoderTiny

    torch.manual_seed(1)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=latent_channels,
    )
    vae.register_to_config(block_out_channels=(16, 16, 16, 16))  # pipelines derive the 8x scale from this
    convs = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            if conv.bias is not None:
                conv.bias.zero_()
        probe = torch.randn(64, latent_channels, 8, 8, generator=torch.Generator().manual_seed(2))
        convs[-1].weight *= 0.25 / vae.decoder(probe).std()
        convs[-1].bias.fill_(0.5)  # the decoder's [0, 1] output: zero latent -> mid-grey
    return vae.eval()


def build_tiny_sd3(path: Path) -> None:
    """SD3-style: SD3Transformer2DModel (2 layers), two tiny CLIP encoders (no T5), a fitted tiny 8x VAE."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,  # the two CLIP hidden states side by side (no T5)
        caption_projection_dim=32,
        pooled_projection_dim=64,  # the two CLIP projections side by side
        pos_embed_max_size=32,
    )
    vae = build_tiny_vae(latent_channels=4)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=_tiny_clip(tokenizer, 2),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_clip(tokenizer, 3),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(path)


TINY_MODELS: dict[str, Callable[[Path], None]] = {"tiny-sd3": build_tiny_sd3}


def resolve_model(name_or_path: str) -> str:
    """A tiny model name -> its cached folder (built on first use, under a file lock); anything else unchanged."""
    if name_or_path not in TINY_MODELS:
        if name_or_path.startswith("tiny-"):
            raise ValueError(f"unknown tiny model {name_or_path!r}; known: {sorted(TINY_MODELS)}")
        return name_or_path
    return str(cached_build(name_or_path, TINY_MODELS[name_or_path], marker="model_index.json"))

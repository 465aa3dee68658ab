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


def _tiny_clip(tokenizer, seed: int, *, projection: bool = True):
    """A 2-layer CLIP text encoder; `projection` adds the projection SD3 pools from (FLUX pools without)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

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
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _tiny_t5(tokenizer, seed: int, config_cls_name: str, model_cls_name: str):
    """A 2-layer T5-style text encoder (T5 for FLUX, UMT5 for Wan), hidden size 32."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, config_cls_name)(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return getattr(transformers, model_cls_name)(config).eval()


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


def build_tiny_flux(path: Path) -> None:
    """FLUX-style: FluxTransformer2DModel (1 double + 1 single block, guidance embedding), a tiny CLIP for the
    pooled vector, a tiny T5 for the tokens, the fitted tiny 8x VAE (4 channels: 16 after 2x2 packing)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # the T5 hidden size
        pooled_projection_dim=32,  # the CLIP hidden size
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # FLUX.1-dev's scheduler config
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=build_tiny_vae(latent_channels=4),
        text_encoder=_tiny_clip(tokenizer, 2, projection=False),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_t5(tokenizer, 3, "T5Config", "T5EncoderModel"),
        tokenizer_2=tokenizer,
    )
    pipe.save_pretrained(path)


def build_tiny_wan_vae(z_dim: int):
    """A tiny AutoencoderKLWan (8x spatial, 4x temporal) whose random decoder draws only its latent.

    Random biases paint a fixed texture whatever the latent, and random residual branches add more of it, so
    here the decoder's biases are zero and each residual/attention branch is switched off (its output
    projection zeroed): the zero latent decodes to flat grey and a spatially uniform latent to a smooth video.
    Wan's per-position RMS norms make the output depend on the direction of each position's latent vector, not
    its length, so (unlike `build_tiny_vae`) contrast does not grow with the latent. The output layer is
    calibrated to a std of 0.5 in [-1, 1] for unit latents. The encoder stays random.
    """
    from diffusers import AutoencoderKLWan

    torch.manual_seed(1)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )
    decoder = [vae.post_quant_conv, *vae.decoder.modules()]
    with torch.no_grad():
        for module in decoder:
            if isinstance(module, torch.nn.Conv2d | torch.nn.Conv3d) and module.bias is not None:
                module.bias.zero_()
            if type(module).__name__ == "WanResidualBlock":
                module.conv2.weight.zero_()
            if type(module).__name__ == "WanAttentionBlock":
                module.proj.weight.zero_()
        probe = torch.randn(8, z_dim, 2, 4, 4, generator=torch.Generator().manual_seed(2))
        vae.decoder.conv_out.weight *= 0.5 / vae.decode(probe, return_dict=False)[0].std()
    return vae.eval()


def build_tiny_wan(path: Path) -> None:
    """Wan 2.1-style text-to-video: WanTransformer3DModel (2 layers), a tiny UMT5, the tiny Wan VAE, and
    Wan 2.1's UniPC flow scheduler config (flow_shift 3)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=32,  # the UMT5 hidden size
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=32,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )  # Wan2.1-T2V-1.3B's config
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_t5(tokenizer, 3, "UMT5Config", "UMT5EncoderModel"),
        vae=build_tiny_wan_vae(z_dim=4),
        scheduler=scheduler,
        transformer=transformer,
    )
    pipe.save_pretrained(path)


TINY_MODELS: dict[str, Callable[[Path], None]] = {
    "tiny-sd3": build_tiny_sd3,
    "tiny-flux": build_tiny_flux,
    "tiny-wan": build_tiny_wan,
}


def resolve_model(name_or_path: str) -> str:
    """A tiny model name -> its cached folder (built on first use, under a file lock); anything else unchanged."""
    if name_or_path not in TINY_MODELS:
        if name_or_path.startswith("tiny-"):
            raise ValueError(f"unknown tiny model {name_or_path!r}; known: {sorted(TINY_MODELS)}")
        return name_or_path
    return str(cached_build(name_or_path, TINY_MODELS[name_or_path], marker="model_index.json"))

"""Overhead of flexgrpo's SDE rollout (per-sample seeds, log-probs, recorded transitions) over a plain
diffusers-style Euler loop, with the same SD3.5-Medium-sized transformer (random weights, no downloads).

    python benchmarks/bench_sampler_overhead.py            # GPU: SD3.5-M size, bf16, 512 px
    python benchmarks/bench_sampler_overhead.py --tiny     # CPU smoke check: a 2-layer transformer, 64 px

Both loops run in one process on one batch, share the transformer (with its LoRA adapter, as in training),
the text conditioning and the VAE, and decode; runs alternate, and the median of `--repeats` is reported.
Prints images/s of each and their ratio (target >= 0.95), without and with CFG.
"""

from __future__ import annotations

import argparse
import statistics
import time

import diffusers
import torch

from actors.policies.sd3 import SD3Policy
from actors.rollout import sample_group
from actors.tiny_models import build_tiny_vae
from flexgrpo.config import PolicyConfig, SamplerConfig
from flexgrpo.records import PromptGroup

SD35_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
TINY = dict(
    sample_size=8,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=4096,
    caption_projection_dim=32,
    pooled_projection_dim=2048,
    pos_embed_max_size=32,
    dual_attention_layers=(0,),
    qk_norm="rms_norm",
)


def build_pipeline(transformer_config: dict, dtype: torch.dtype):
    """A StableDiffusion3Pipeline with the given transformer and one-layer text encoders of SD3's real widths
    (CLIP-L 768, CLIP-G 1280, T5 4096, so the conditioning has the real shapes), a tiny 16-channel VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from actors.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)

    def clip(width: int):
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                intermediate_size=width,
                projection_dim=width,
                num_hidden_layers=1,
                num_attention_heads=8,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )

    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=4096,
            d_kv=64,
            d_ff=256,
            num_layers=1,
            num_heads=8,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**transformer_config),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=build_tiny_vae(latent_channels=16),
        text_encoder=clip(768),
        tokenizer=tokenizer,
        text_encoder_2=clip(1280),
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=tokenizer,
    )
    return pipe.to(dtype=dtype)


@torch.no_grad()
def euler_loop(policy: SD3Policy, batch: int, steps: int, guidance: float) -> torch.Tensor:
    """The diffusers SD3 pipeline's denoising loop: latents in the model dtype, CFG as one doubled batch,
    `scheduler.step`, then decode. -> uint8 images [B, H, W, 3]"""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from actors.policies.base import decode_images

    pipe, device, dtype = policy.pipeline, policy.device, policy.dtype
    use_cfg = guidance > 1.0
    texts = policy.encode_prompts(["a photo of a cat", ""] if use_cfg else ["a photo of a cat"])
    tokens = torch.stack([t.tokens for t in texts for _ in range(batch)])  # [B or 2B, L, D]
    pooled = torch.stack([t.pooled for t in texts for _ in range(batch)])  # [B or 2B, P]
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    latents = torch.randn(batch, *policy.latent_shape(), device=device, dtype=dtype)  # [B, C, h, w]
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if use_cfg else latents
        v = policy.transformer(
            hidden_states=model_input,
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            timestep=t.expand(model_input.shape[0]),
            return_dict=False,
        )[0]
        if use_cfg:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return decode_images(pipe.vae, latents)


def flexgrpo_sde(policy: SD3Policy, batch: int, steps: int, guidance: float) -> torch.Tensor:
    """flexgrpo's rollout of one group: SDE steps with log-probs, every step recorded (Flow-GRPO's 0.99)."""
    cfg = SamplerConfig(
        kind="sde",
        noise_level=0.7,
        num_steps=steps,
        guidance_scale=guidance,
        train_timesteps="fraction",
        timestep_fraction=0.99,
    )
    _, media = sample_group(
        policy, PromptGroup("bench", "a photo of a cat", batch, seed=0), cfg, run_seed=0, policy_version=0
    )
    return media.media


def timed(fn, *args) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke: 2-layer model, 64 px, fp32")
    parser.add_argument("--batch", type=int, default=None, help="images per group (default 8; tiny 2)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 10; tiny 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per loop (default 5; tiny 2)")
    args = parser.parse_args()
    tiny = args.tiny
    batch, steps = args.batch or (2 if tiny else 8), args.steps or (3 if tiny else 10)
    repeats = args.repeats or (2 if tiny else 5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = "fp32" if tiny else "bf16"
    size = 64 if tiny else 512

    diffusers.utils.logging.set_verbosity_error()
    pipe = build_pipeline(TINY if tiny else SD35_MEDIUM, torch.float32 if tiny else torch.bfloat16)
    tokens = 77 if tiny else 256  # T5 tokens, the SD3 pipeline's default on the GPU
    policy_cfg = PolicyConfig(dtype=dtype_name, height=size, width=size, max_sequence_length=tokens)
    policy = SD3Policy(policy_cfg, device, pipeline=pipe)
    params = sum(p.numel() for p in policy.transformer.parameters()) / 1e6
    print(
        f"device {device}; transformer {params:.1f} M params ({dtype_name}, LoRA r32); {size} px, "
        f"batch {batch}, {steps} steps, median of {repeats}"
    )

    rows = []
    for guidance in (1.0, 4.5):
        for fn in (euler_loop, flexgrpo_sde):  # warm-up (kernels, allocator)
            fn(policy, batch, steps, guidance)
        times = {euler_loop: [], flexgrpo_sde: []}
        for _ in range(repeats):
            for fn in times:
                times[fn].append(timed(fn, policy, batch, steps, guidance))
        base, ours = (batch / statistics.median(times[fn]) for fn in (euler_loop, flexgrpo_sde))
        rows.append((guidance, base, ours))

    print(f"| {'CFG':>4} | {'diffusers Euler img/s':>21} | {'flexgrpo SDE+logp img/s':>23} | {'ratio':>5} |")
    print(f"|{'-' * 6}|{'-' * 23}|{'-' * 25}|{'-' * 7}|")
    for guidance, base, ours in rows:
        print(f"| {guidance:>4} | {base:>21.3f} | {ours:>23.3f} | {ours / base:>5.2f} |")
    worst = min(ours / base for _, base, ours in rows)
    verdict = "" if tiny else (" OK" if worst >= 0.95 else " BELOW")
    print(f"worst ratio {worst:.2f} (target >= 0.95){verdict}")


if __name__ == "__main__":
    main()

"""Writing the learner's weights for evaluation and release, in the formats diffusers loads: a LoRA as
`pipeline.load_lora_weights(folder)` reads it, a full fine-tune as `<TransformerClass>.from_pretrained(folder)`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from flexgrpo.weight_transport import describe, fill_buckets
from learner.trained_weights import TrainedWeights


def export(
    folder: str | Path,
    transformer: torch.nn.Module,
    pipeline_cls: type,
    weights: TrainedWeights,
    *,
    lora: bool,
    rank: int,
    bucket_mb: float,
) -> Path | None:
    """Every rank: write the weights, the EMA when the learner keeps one. pipeline_cls: the diffusers pipeline
    class that saves a LoRA. -> rank 0: the folder; others None"""
    with weights.ema_swapped():
        if lora:
            save_lora(folder, transformer, pipeline_cls, weights, rank=rank)
            return Path(folder) if rank == 0 else None
        whole = weights.meta()
        state = {n: torch.empty_like(t, device="cpu") for n, t in whole.items()} if rank == 0 else None
        fill_buckets(describe(whole, 0, bucket_mb), weights.whole, state)  # gathered bucket by bucket (no version)
    if state is None:
        return None
    _save_transformer(Path(folder), transformer, state)
    return Path(folder)


def save_lora(
    folder: str | Path, transformer: torch.nn.Module, pipeline_cls: type, weights: TrainedWeights, *, rank: int
) -> Path:
    """Rank 0 saves the adapter in the diffusers LoRA format; under ZeRO-3 every rank must call it (the adapter
    is gathered)."""
    from peft.utils import get_peft_model_state_dict

    with weights.gathered():
        layers = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(transformer).items()}
    if rank == 0:  # with its alpha: without the metadata diffusers would load it at scale 1
        metadata = transformer.peft_config["default"].to_dict()
        pipeline_cls.save_lora_weights(
            folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata
        )
    return Path(folder)


def _save_transformer(folder: Path, transformer: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Write the transformer with `state` in place of its trained weights, as `save_pretrained` does."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    transformer.save_config(folder)
    rest = {k: v.detach().cpu() for k, v in transformer.state_dict().items() if k not in state}
    save_file(rest | state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})

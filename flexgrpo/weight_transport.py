"""Weights from the learner to the rollout workers: a flat buffer broadcast over its own process group.

The group is a torch.distributed ProcessGroup (gloo on CPU, NCCL on GPUs) built on its own TCPStore, so
it lives beside DeepSpeed's default group. Rank 0 is the learner's first rank; rollout workers are 1..N.
The header (`WeightUpdate`: version, names, shapes) travels through Ray; only the flat tensor goes here.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from flexgrpo.records import WeightUpdate


class WeightSyncGroup:
    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device, timeout_s: float = 600):
        self.rank, self.device = rank, device
        timeout = timedelta(seconds=timeout_s)
        self._store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        if device.type == "cuda":
            self._group = dist.ProcessGroupNCCL(self._store, rank, world_size)
        else:
            self._group = dist.ProcessGroupGloo(self._store, rank, world_size, timeout)

    def broadcast(self, flat: torch.Tensor) -> torch.Tensor:
        """Rank 0 sends `flat`; every other rank receives into it (same numel and dtype)."""
        self._group.broadcast(flat, 0).wait()
        return flat


def pack(params: dict[str, torch.Tensor], version: int) -> tuple[WeightUpdate, torch.Tensor]:
    """Named tensors -> (header, one flat buffer in the order of the header)."""
    names = sorted(params)
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    shapes = [list(params[n].shape) for n in names]
    return WeightUpdate(version, names, shapes, str(flat.dtype).removeprefix("torch.")), flat


def empty_buffer(header: WeightUpdate, device: torch.device) -> torch.Tensor:
    return torch.empty(header.numel, dtype=getattr(torch, header.dtype), device=device)


@torch.no_grad()
def unpack_into(params: dict[str, torch.Tensor], header: WeightUpdate, flat: torch.Tensor) -> None:
    """Copy a received flat buffer into the named tensors, checking that both sides agree on the layout."""
    missing = set(header.names) ^ set(params)
    if missing:
        raise ValueError(f"weight update does not match this model; differing names: {sorted(missing)[:5]}")
    offset = 0
    for name, shape in zip(header.names, header.shapes, strict=True):
        n = int(torch.Size(shape).numel())
        params[name].copy_(flat[offset : offset + n].view(shape))
        offset += n

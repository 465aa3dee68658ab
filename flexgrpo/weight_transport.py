"""Weights from the learner to the rollout workers: named tensors streamed in fixed-size buckets.

The group is a torch.distributed ProcessGroup (gloo on CPU, NCCL on GPUs) built on its own TCPStore, so it
lives beside DeepSpeed's default group. Rank 0 is the learner's first rank; rollout workers are 1..N.
The header (`WeightUpdate`: version, names, shapes, dtypes, buckets, checksum) travels through Ray; only the
bucket bytes go over this group:

    header = describe(params, version, bucket_mb)     # rank 0: layout + checksum
    send(group, params, header)                        # rank 0
    receive(group, header, into=worker_params)         # ranks 1..N, concurrently

Each side holds at most two bucket buffers (one on the wire, one being packed or unpacked); a bucket of a
single tensor goes straight from and into that tensor. Tensors keep their dtype: nothing is cast.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from datetime import timedelta

import torch
import torch.distributed as dist

from flexgrpo.records import WeightUpdate

_MASK = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: position-dependent mixing of the per-tensor sums


class WeightSyncError(RuntimeError):
    """A weight update that does not fit the receiving model, or whose bytes do not match the header."""


class WeightSyncGroup:
    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device, timeout_s: float = 600):
        self.rank, self.device = rank, device
        timeout = timedelta(seconds=timeout_s)
        self._store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        if device.type == "cuda":
            self._group = dist.ProcessGroupNCCL(self._store, rank, world_size)
        else:
            self._group = dist.ProcessGroupGloo(self._store, rank, world_size, timeout)

    def broadcast_async(self, tensor: torch.Tensor) -> dist.Work:
        """Rank 0 sends `tensor`; every other rank receives into it. Returns the pending work."""
        return self._group.broadcast(tensor, 0)

    def broadcast(self, flat: torch.Tensor) -> torch.Tensor:
        """Blocking `broadcast_async` of one tensor (the unbucketed path)."""
        self.broadcast_async(flat).wait()
        return flat


def describe(params: Mapping[str, torch.Tensor], version: int, bucket_mb: float) -> WeightUpdate:
    """The header of sending `params` as `version`: names sorted, consecutive same-dtype tensors grouped
    into buckets of at most `bucket_mb` MiB (a larger tensor is a bucket of its own), and a checksum."""
    names = sorted(params)
    limit = int(bucket_mb * 2**20)
    bucket_ends: list[int] = []
    size, dtype = 0, None
    for i, name in enumerate(names):
        t = params[name]
        nbytes = t.numel() * t.element_size()
        if i and (t.dtype != dtype or size + nbytes > limit):
            bucket_ends.append(i)
            size = 0
        size, dtype = size + nbytes, t.dtype
    if names:
        bucket_ends.append(len(names))
    return WeightUpdate(
        version=version,
        names=names,
        shapes=[list(params[n].shape) for n in names],
        dtypes=[_dtype_name(params[n].dtype) for n in names],
        bucket_ends=bucket_ends,
        checksum=checksum(params, names),
    )


@torch.no_grad()
def send(group: WeightSyncGroup, params: Mapping[str, torch.Tensor], header: WeightUpdate) -> None:
    """Rank 0: broadcast `params` bucket by bucket as `header` describes (from `describe(params, ...)`).
    Blocks until every bucket is on the wire; at most two bucket buffers exist at a time."""
    buffers = _BucketBuffers(header, group.device)
    in_flight: deque[dist.Work] = deque()
    for b, (start, end) in enumerate(header.bucket_ranges()):
        if len(in_flight) == 2:
            in_flight.popleft().wait()  # frees the buffer this bucket packs into
        tensors = [params[n].detach() for n in header.names[start:end]]
        if len(tensors) == 1 and tensors[0].is_contiguous() and tensors[0].device == group.device:
            wire = tensors[0].reshape(-1)
        else:
            wire = buffers.get(b, start, end)
            torch.cat([t.reshape(-1).to(group.device) for t in tensors], out=wire)
        in_flight.append(group.broadcast_async(wire))
    for work in in_flight:
        work.wait()


@torch.no_grad()
def receive(group: WeightSyncGroup, header: WeightUpdate, into: Mapping[str, torch.Tensor]) -> None:
    """Ranks 1..N: receive the broadcast that `header` describes and copy it into `into`, bucket by bucket.

    `into` maps every name of `header.names` to a tensor of the header's shape and dtype on this rank's device
    (e.g. the worker's trainable parameters, or a staging dict shaped like them); they are overwritten in place.
    Raises `WeightSyncError` before any byte moves when the names bind to nothing or differ, or a shape or
    dtype differs; and after the transfer when the received weights do not match `header.checksum`
    (`into` then holds bytes that must not be used). Every receiver must call it, concurrently with `send`.
    """
    check_binds(header, into)
    buffers = _BucketBuffers(header, group.device)
    pending: deque[tuple[int, int, torch.Tensor, dist.Work]] = deque()

    def unpack(start: int, end: int, wire: torch.Tensor, work: dist.Work) -> None:
        work.wait()
        offset = 0
        for name in header.names[start:end]:
            target = into[name]
            if target.data_ptr() != wire.data_ptr():
                n = target.numel()
                target.copy_(wire[offset : offset + n].view(target.shape))
                offset += n

    for b, (start, end) in enumerate(header.bucket_ranges()):
        target = into[header.names[start]]
        if end - start == 1 and target.is_contiguous() and target.device == group.device:
            wire = target.view(-1)
        else:
            wire = buffers.get(b, start, end)
        pending.append((start, end, wire, group.broadcast_async(wire)))
        if len(pending) == 2:
            unpack(*pending.popleft())
    while pending:
        unpack(*pending.popleft())
    got = checksum(into, header.names)
    if got != header.checksum:
        raise WeightSyncError(
            f"weight update v{header.version}: checksum {got} of the received weights != {header.checksum} "
            "sent; sender and receiver disagree on the bytes (a different version or a broken transfer)"
        )


def check_binds(header: WeightUpdate, into: Mapping[str, torch.Tensor]) -> None:
    """Fail loudly unless every header name binds to a tensor of `into` of the same shape and dtype, and back."""
    sent, here = set(header.names), set(into)
    if not sent & here:
        raise WeightSyncError(
            f"weight update v{header.version} binds to nothing: none of its {len(sent)} names exist here "
            f"(sent e.g. {sorted(sent)[:3]}, this model has e.g. {sorted(here)[:3]}); the learner and the worker "
            "name their trained parameters differently (LoRA adapter name, target modules, or LoRA on one side only)"
        )
    if sent != here:
        raise WeightSyncError(
            f"weight update v{header.version} does not match this model: missing here {sorted(sent - here)[:5]}, "
            f"not sent {sorted(here - sent)[:5]}"
        )
    for name, shape, dtype in zip(header.names, header.shapes, header.dtypes, strict=True):
        t = into[name]
        if list(t.shape) != shape or _dtype_name(t.dtype) != dtype:
            raise WeightSyncError(
                f"weight update v{header.version}: {name} is sent as {dtype}{shape} but is "
                f"{_dtype_name(t.dtype)}{list(t.shape)} here; build both sides with the same policy config"
            )


@torch.no_grad()
def checksum(params: Mapping[str, torch.Tensor], names: list[str]) -> str:
    """A cheap integrity checksum of the bytes of `params[names]` in that order (wrapping 64-bit word sums,
    mixed by position; ~10 GB/s on a CPU core). Equal bytes give equal checksums on CPU and GPU alike."""
    total = 0
    for i, name in enumerate(names):
        raw = params[name].detach().contiguous().reshape(-1).view(torch.uint8)
        n = raw.numel() // 8 * 8
        words = raw[:n].view(torch.int64)
        s = int(words.sum()) + _MIX * int(words[::3].sum()) + int(raw[n:].sum())
        total = (total * _MIX + (i + 1) * s) & _MASK
    return f"{total:016x}"


class _BucketBuffers:
    """Two reusable byte buffers of the largest bucket, viewed as each bucket's dtype and length."""

    def __init__(self, header: WeightUpdate, device: torch.device) -> None:
        self.header, self.device = header, device
        self._raw: list[torch.Tensor | None] = [None, None]

    def get(self, b: int, start: int, end: int) -> torch.Tensor:
        dtype = getattr(torch, self.header.dtypes[start])
        numel = sum(int(torch.Size(s).numel()) for s in self.header.shapes[start:end])
        nbytes = numel * dtype.itemsize
        raw = self._raw[b % 2]
        if raw is None or raw.numel() < nbytes:
            raw = self._raw[b % 2] = torch.empty(self.header.max_bucket_bytes(), dtype=torch.uint8, device=self.device)
        return raw[:nbytes].view(dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- the unbucketed path of the old rollout worker (one flat buffer); removed once nothing calls it ----

"""Bucketed weight sync over real gloo groups (threads, no Ray): round trips exactly in every dtype and bucket
size, sends only what changed hands, and fails loudly on a checksum mismatch or names that bind to nothing."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from flexgrpo.weight_transport import WeightSyncError, WeightSyncGroup, describe, receive, send

CPU = torch.device("cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, body: Callable[[WeightSyncGroup], object]) -> list[object]:
    """Run `body(group)` on `world` threads, one per rank of a fresh gloo group; returns results or errors."""
    port, results = free_port(), [None] * world

    def target(rank: int) -> None:
        try:
            results[rank] = body(WeightSyncGroup("127.0.0.1", port, rank, world, CPU, timeout_s=30))
        except Exception as err:
            results[rank] = err

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def model_params(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.attn.to_q.weight": torch.randn(64, 64, generator=g),
        "blocks.0.attn.to_q.bias": torch.randn(64, generator=g),
        "blocks.0.norm.weight": torch.randn(7, generator=g).to(torch.bfloat16),  # odd byte count
        "blocks.1.ff.weight": torch.randn(256, 64, generator=g).to(torch.bfloat16),
        "proj_out.weight": torch.randn(3, 5, 2, generator=g).to(torch.float16),
        "scale": torch.randn((), generator=g),
    }


@pytest.mark.parametrize("bucket_mb", [0.004, 0.02, 64.0])  # one tensor per bucket, a few per bucket, one bucket
def test_bucketed_round_trip_to_two_receivers_is_exact(bucket_mb):
    sent = model_params(0)
    header = describe(sent, version=3, bucket_mb=bucket_mb)
    assert header.bucket_ends[-1] == len(sent) and header.names == sorted(sent)
    for a, b in header.bucket_ranges():  # a bucket holds one dtype and stays within its size unless single
        assert len(set(header.dtypes[a:b])) == 1
        nbytes = sum(sent[n].numel() * sent[n].element_size() for n in header.names[a:b])
        assert b - a == 1 or nbytes <= bucket_mb * 2**20
    if bucket_mb == 0.004:
        assert len(header.bucket_ends) == len(sent)

    def body(group: WeightSyncGroup):
        if group.rank == 0:
            return send(group, sent, header)
        into = {n: torch.zeros_like(t) for n, t in model_params(1).items()}
        receive(group, header, into)
        return into

    _, *received = run_ranks(3, body)
    for into in received:
        assert not isinstance(into, Exception), into
        for name, t in sent.items():
            assert into[name].dtype == t.dtype and torch.equal(into[name], t), name


def test_checksum_mismatch_fails_loudly():
    sent = model_params(0)
    header = describe(sent, version=5, bucket_mb=0.01)
    stale = replace(header, checksum=describe(model_params(2), version=5, bucket_mb=0.01).checksum)

    def body(group: WeightSyncGroup):
        if group.rank == 0:
            return send(group, sent, header)
        return receive(group, stale, {n: torch.zeros_like(t) for n, t in sent.items()})

    _, err = run_ranks(2, body)
    assert isinstance(err, WeightSyncError) and "checksum" in str(err) and "v5" in str(err)


def test_checksum_sees_every_tensor_and_its_position():
    params = model_params(0)
    base = describe(params, 0, 1.0).checksum
    for name in params:
        changed = dict(params)
        flat = params[name].clone().reshape(-1)
        flat[-1] = flat[-1] + 1
        changed[name] = flat.view(params[name].shape)
        assert describe(changed, 0, 1.0).checksum != base, name
    swapped = dict(params, **{"blocks.0.attn.to_q.bias": params["blocks.0.attn.to_q.bias"].flip(0)})
    assert describe(swapped, 0, 1.0).checksum != base


def test_lora_names_that_bind_to_nothing_fail_before_any_transfer():
    lora = {f"layer.{i}.to_q.lora_A.default_0.weight": torch.randn(4, 8) for i in range(3)}
    header = describe(lora, version=1, bucket_mb=1.0)
    other_adapter = {n.replace("default_0", "default"): torch.zeros(4, 8) for n in lora}
    with pytest.raises(WeightSyncError, match="binds to nothing"):
        receive(None, header, other_adapter)  # type: ignore[arg-type]  (raises before touching the group)
    partial = dict(list(lora.items())[:2])
    with pytest.raises(WeightSyncError, match="missing here"):
        receive(None, header, {n: torch.zeros(4, 8) for n in partial})  # type: ignore[arg-type]
    wrong_dtype = {n: torch.zeros(4, 8, dtype=torch.bfloat16) for n in lora}
    with pytest.raises(WeightSyncError, match="float32"):
        receive(None, header, wrong_dtype)  # type: ignore[arg-type]

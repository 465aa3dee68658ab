"""Bucketed weight sync over real gloo groups (threads, no Ray): round trips exactly in every dtype and bucket
size, from and into plain tensors or bucket views (those with no packing copy, and while the snapshot is still
being filled); a publisher reuses snapshot memory only once its send is done; and it fails loudly on another
version, a changed byte, or names that bind to nothing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch

from flexgrpo import weight_transport
from flexgrpo.records import WeightUpdate
from flexgrpo.weight_transport import (
    BucketsReady,
    Publisher,
    WeightSyncError,
    WeightSyncGroup,
    bucket_views,
    checksum,
    describe,
    fill_buckets,
    receive,
    send,
)

CPU = torch.device("cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    world: int, body: Callable[[WeightSyncGroup], object], group: type[WeightSyncGroup] = WeightSyncGroup
) -> list[object]:
    """Run `body(group)` on `world` threads, one per rank of a fresh gloo group; returns results or errors."""
    port, results = free_port(), [None] * world

    def target(rank: int) -> None:
        try:
            results[rank] = body(group("127.0.0.1", port, rank, world, CPU, timeout_s=30))
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


def snapshot(params: dict[str, torch.Tensor], layout: str, header: WeightUpdate) -> dict[str, torch.Tensor]:
    """A copy of `params`: one tensor each ("plain") or views into one flat tensor per bucket ("views")."""
    out = bucket_views(header, CPU) if layout == "views" else {n: torch.empty_like(t) for n, t in params.items()}
    for name, t in out.items():
        t.copy_(params[name])
    return out


@pytest.mark.parametrize("sender", ["plain", "views"])
@pytest.mark.parametrize("bucket_mb", [0.004, 0.02, 64.0])  # one tensor per bucket, a few per bucket, one bucket
def test_bucketed_round_trip_to_two_receivers_is_exact(bucket_mb, sender):
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
            return send(group, snapshot(sent, sender, header), header)
        into = snapshot(model_params(1), "plain" if group.rank == 1 else "views", header)
        receive(group, header, into)
        return into

    _, *received = run_ranks(3, body)
    for into in received:
        assert not isinstance(into, Exception), into
        for name, t in sent.items():
            assert into[name].dtype == t.dtype and torch.equal(into[name], t), name


def test_bucket_views_move_every_bucket_without_a_bucket_buffer(monkeypatch):
    sent = model_params(0)
    header = describe(sent, version=1, bucket_mb=0.02)
    assert any(b - a > 1 for a, b in header.bucket_ranges())

    def no_buffer(*args):
        raise AssertionError("a bucket was packed or unpacked")

    monkeypatch.setattr(weight_transport._BucketBuffers, "get", no_buffer)

    def body(group: WeightSyncGroup):
        if group.rank == 0:
            return send(group, snapshot(sent, "views", header), header)
        into = snapshot(model_params(1), "views", header)
        receive(group, header, into)
        return into

    _, received = run_ranks(2, body)
    assert all(torch.equal(received[n], t) for n, t in sent.items())


def whole(params: dict[str, torch.Tensor]):
    """`params` as a `BucketSource`."""
    return lambda names: nullcontext(params)


def test_a_snapshot_filled_while_send_streams_it_arrives_whole():
    sent = model_params(0)
    header = describe(sent, version=2, bucket_mb=0.004)

    def body(group: WeightSyncGroup):
        if group.rank == 1:
            into = snapshot(model_params(1), "views", header)
            receive(group, header, into)
            return into
        views, ready = bucket_views(header, CPU), BucketsReady()
        sending = threading.Thread(target=send, args=(group, views, header, ready))
        sending.start()
        fill_buckets(header, whole(sent), views, ready)
        sending.join()

    _, received = run_ranks(2, body)
    assert all(torch.equal(received[n], t) for n, t in sent.items())
    failed = BucketsReady()
    failed.set(1)
    failed.fail(RuntimeError("gather failed"))
    failed.wait(0)
    with pytest.raises(WeightSyncError, match="bucket 1 was filled.*gather failed"):
        failed.wait(1)


def test_a_snapshot_that_fails_part_way_aborts_the_update_at_once_and_the_group_lives_on():
    sent = model_params(0)
    header = describe(sent, version=4, bucket_mb=0.004)
    assert len(header.bucket_ends) > 2

    def body(group: WeightSyncGroup):
        if group.rank == 1:
            into = snapshot(model_params(1), "views", header)
            with pytest.raises(WeightSyncError, match="v4 was aborted by the sender"):
                receive(group, header, into)
            receive(group, replace(header, version=5), into)  # the next version arrives whole
            return into
        views, ready = bucket_views(header, CPU), BucketsReady()
        for name in header.names[: header.bucket_ends[0]]:
            views[name].copy_(sent[name])
        ready.set(1)
        ready.fail(RuntimeError("a ZeRO-3 gather failed"))  # the snapshot stops after the first bucket
        with pytest.raises(WeightSyncError, match="gather failed"):
            send(group, views, header, ready)
        send(group, snapshot(sent, "views", header), replace(header, version=5))

    start = time.monotonic()
    results = run_ranks(2, body)
    assert not any(isinstance(r, Exception) for r in results), results
    assert time.monotonic() - start < 20  # no rank waited out the group's 30 s timeout
    assert all(torch.equal(results[1][n], t) for n, t in sent.items())


def receive_versions(group: WeightSyncGroup, headers: list[WeightUpdate], delay_s: float) -> list[dict]:
    """A receiver that starts late: each header's version into one staging copy; -> a copy of each."""
    time.sleep(delay_s)
    into, got = bucket_views(headers[0], CPU), []
    for h in headers:
        receive(group, h, into)
        got.append({n: t.clone() for n, t in into.items()})
    return got


def recording_fill(h: WeightUpdate, params: dict[str, torch.Tensor], memory: list[set[int]]):
    """A publisher's fill of `params` that records which storages the snapshot it got lies in."""

    def fill(out: dict[str, torch.Tensor], ready: BucketsReady) -> None:
        memory.append({t.untyped_storage().data_ptr() for t in out.values()})
        fill_buckets(h, whole(params), out, ready)

    return fill


def test_publishes_stream_in_order_and_reuse_only_a_snapshot_already_sent():
    g = torch.Generator().manual_seed(0)
    versions = [{"a": torch.randn(2**21, generator=g), "b": torch.randn(2**21, generator=g)} for _ in range(3)]
    headers = [describe(p, version=v, bucket_mb=4) for v, p in enumerate(versions)]  # 16 MB: more than a socket holds

    def body(group: WeightSyncGroup):
        if group.rank == 1:
            return receive_versions(group, headers, 0.5)  # v0 and v1 are both published before it receives
        publisher, memory = Publisher(group, CPU), []
        first = [publisher.publish(h, recording_fill(h, versions[v], memory)) for v, h in enumerate(headers[:2])]
        assert not first[0].done()  # v1 was filled while v0 was still on the wire
        for sending in first:
            sending.result()
        publisher.publish(headers[2], recording_fill(headers[2], versions[2], memory)).result()
        publisher.close()
        return memory

    results = run_ranks(2, body)
    assert not any(isinstance(r, Exception) for r in results), results
    memory, received = results
    assert memory[1] != memory[0]  # never the memory of a snapshot still being sent
    assert memory[2] == memory[1]  # but that of the last one sent
    for got, sent in zip(received, versions, strict=True):
        assert all(torch.equal(got[n], t) for n, t in sent.items())


def test_a_ring_of_two_buckets_streams_every_version_whole():
    g = torch.Generator().manual_seed(1)
    names = [f"blocks.{i}.weight" for i in range(6)]  # 6 buckets of 4 MB through 2 buckets of memory
    versions = [{n: torch.randn(2**20, generator=g) for n in names} for _ in range(2)]
    headers = [describe(p, version=v, bucket_mb=4) for v, p in enumerate(versions)]

    def body(group: WeightSyncGroup):
        if group.rank != 0:
            return receive_versions(group, headers, 0.3)  # the filler must wait for the wire to reuse a buffer
        publisher, memory = Publisher(group, CPU, slots=2), []
        for h, params in zip(headers, versions, strict=True):
            publisher.publish(h, recording_fill(h, params, memory)).result()
        publisher.close()
        return memory

    results = run_ranks(3, body)
    assert not any(isinstance(r, Exception) for r in results), results
    assert [len(m) for m in results[0]] == [2, 2]  # the snapshot: two buffers, not a copy of every bucket
    for received in results[1:]:
        for got, sent in zip(received, versions, strict=True):
            assert all(torch.equal(got[n], t) for n, t in sent.items())


def test_receiving_another_version_fails_loudly():
    sent = model_params(0)
    header = describe(sent, version=5, bucket_mb=0.01)

    def body(group: WeightSyncGroup):
        if group.rank == 0:
            return send(group, sent, header)
        return receive(group, replace(header, version=4), {n: torch.zeros_like(t) for n, t in sent.items()})

    _, err = run_ranks(2, body)
    assert isinstance(err, WeightSyncError) and "v4" in str(err) and "sent v5" in str(err)


class FlipsAByteOfBfloat16Buckets(WeightSyncGroup):
    """Rank 0 puts a copy of each bfloat16 bucket on the wire with its last byte changed (a broken transfer)."""

    def broadcast_async(self, tensor: torch.Tensor):
        if self.rank == 0 and tensor.dtype == torch.bfloat16:
            tensor = tensor.clone()
            tensor.view(torch.uint8)[-1] ^= 1
        return super().broadcast_async(tensor)


def test_a_changed_byte_on_the_wire_fails_loudly_naming_its_bucket():
    sent = model_params(0)
    header = describe(sent, version=5, bucket_mb=0.01)
    first_bf16 = header.dtypes.index("bfloat16")
    bucket = next(b for b, end in enumerate(header.bucket_ends) if end > first_bf16)

    def body(group: WeightSyncGroup):
        if group.rank == 0:
            return send(group, sent, header)
        return receive(group, header, {n: torch.zeros_like(t) for n, t in sent.items()})

    _, err = run_ranks(2, body, FlipsAByteOfBfloat16Buckets)
    assert isinstance(err, WeightSyncError) and "checksum" in str(err), err
    assert f"bucket {bucket} of" in str(err) and header.names[first_bf16] in str(err)


def test_checksum_sees_every_byte_and_where_a_word_sits():
    g = torch.Generator().manual_seed(0)
    wire = torch.randint(0, 256, (1000,), dtype=torch.uint8, generator=g)  # 7 rows of 128 bytes and a tail
    base = checksum(wire)
    assert base.shape == (16,) and torch.equal(checksum(wire.clone()), base)
    for i in range(wire.numel()):
        changed = wire.clone()
        changed[i] ^= 1 << (i % 8)
        assert not torch.equal(checksum(changed), base), i
    words = wire[:896].view(torch.int64)
    for shift in (1, 15, 17):  # a word moved to another column
        moved = wire.clone()
        moved[:896].view(torch.int64)[:] = words.roll(shift)
        assert not torch.equal(checksum(moved), base), shift
    assert torch.equal(checksum(wire[8:].clone()), checksum(wire[8:]))  # an unaligned view: same bytes, same sum


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

"""Weights from the learner to the rollout workers: named tensors streamed in fixed-size buckets.

The group is a torch.distributed ProcessGroup (gloo on CPU, NCCL on GPUs) built on its own TCPStore, so it
lives beside DeepSpeed's default group. Rank 0 is the learner's first rank; rollout workers are 1..N.
The header (`WeightUpdate`: version, names, shapes, dtypes, buckets) travels through Ray. Over this group go
the buckets, then a trailer: the version and each bucket's checksum, which every receiver verifies.

    header = describe(params, version, bucket_mb)     # the layout; reads shapes and dtypes only
    send(group, params, header)                        # rank 0
    receive(group, header, into=worker_params)         # ranks 1..N, concurrently

Rank 0 of a trainer that goes on while its weights are on the wire publishes through a `Publisher`: it snapshots
a version bucket by bucket (`fill_buckets`) while its sender thread already streams the filled buckets.

A bucket whose tensors lie back to back in one storage, in header order (a single contiguous tensor, or the
views `bucket_views` allocates), goes straight from and into that memory. Any other bucket passes through one
of two reusable bucket buffers, so a side holds at most two buckets beyond its tensors. Each side checksums a
bucket while the next one is on the wire. Tensors keep their dtype: nothing is cast.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from flexgrpo.records import WeightUpdate

_WORDS = 16  # a checksum sums the bucket's 8-byte words in 16 columns (word index mod 16)
_ROW_BYTES = 8 * _WORDS
_ABORTED = 1  # trailer[0, 1]: the sender could not fill every bucket


BUCKET_TIMEOUT_S = 60.0  # gloo: one bucket's broadcast (at most `learner.sync_bucket_mb`, seconds on any link)


class WeightSyncError(RuntimeError):
    """A weight update that does not fit the receiving model, or whose bytes do not match what was sent."""


class WeightSyncGroup:
    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device, timeout_s: float = 600):
        """timeout_s: how long the rendezvous waits for every member. On CPU (gloo) one broadcast (a bucket) fails
        after BUCKET_TIMEOUT_S at most: a member that died mid-broadcast must not hold the survivors' receives
        (and so the group's rebuild without it) for the rendezvous' whole timeout."""
        self.rank, self.device = rank, device
        self._store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timedelta(seconds=timeout_s))
        if device.type == "cuda":
            self._group = dist.ProcessGroupNCCL(self._store, rank, world_size)
        else:
            bucket_timeout = timedelta(seconds=min(timeout_s, BUCKET_TIMEOUT_S))
            self._group = dist.ProcessGroupGloo(self._store, rank, world_size, bucket_timeout)

    def broadcast_async(self, tensor: Tensor) -> dist.Work:
        """Rank 0 sends `tensor`; every other rank receives into it. Returns the pending work."""
        return self._group.broadcast(tensor, 0)


def describe(params: Mapping[str, Tensor], version: int, bucket_mb: float) -> WeightUpdate:
    """The header of sending `params` as `version`: names sorted, consecutive same-dtype tensors grouped
    into buckets of at most `bucket_mb` MiB (a larger tensor is a bucket of its own). Reads only shapes and
    dtypes, so `params` may be meta tensors."""
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
    )


def bucket_views(
    header: WeightUpdate, device: torch.device, pin_memory: bool = False, slots: int | None = None
) -> dict[str, Tensor]:
    """Tensors named and shaped as `header` says, views into one flat tensor per bucket, so that `send` and
    `receive` move each bucket with no packing copy (e.g. the learner's snapshot, a worker's staging copy).

    slots: a ring instead of a whole copy: bucket b lies in buffer b % slots of `slots` buffers of the largest
    bucket, so the views of different buckets share memory. Fill it through a `BucketsReady(slots)`, which lets
    a bucket be written only once the bucket before it in that buffer is off the wire."""
    ring = _BucketBuffers(header, device, slots, pin_memory) if slots else None
    views: dict[str, Tensor] = {}
    for b, (start, end) in enumerate(header.bucket_ranges()):
        shapes = [torch.Size(s) for s in header.shapes[start:end]]
        if ring is not None:
            flat = ring.get(b, start, end)
        else:
            numel = sum(s.numel() for s in shapes)
            flat = torch.empty(numel, dtype=_dtype(header, start), device=device, pin_memory=pin_memory)
        pieces = flat.split([s.numel() for s in shapes])
        for name, piece, shape in zip(header.names[start:end], pieces, shapes, strict=True):
            views[name] = piece.view(shape)
    return views


class BucketsReady:
    """The hand-off of a snapshot between the thread that fills it, bucket by bucket in header order, and `send`
    streaming the filled buckets from another. With `slots` the snapshot is a ring (`bucket_views(...,
    slots)`): bucket b may be written only once bucket b - slots, in the same memory, is off the wire."""

    def __init__(self, slots: int | None = None) -> None:
        self.slots = slots
        self._count = 0  # buckets filled
        self._sent = 0  # buckets off the wire (their memory may be written again)
        self._error: BaseException | None = None  # why filling stopped
        self._changed = threading.Condition()

    def set(self, count: int) -> None:
        """The first `count` buckets are filled."""
        with self._changed:
            self._count = count
            self._changed.notify_all()

    def fail(self, error: BaseException) -> None:
        """No more buckets will be filled: `wait` raises."""
        with self._changed:
            self._error = error
            self._changed.notify_all()

    def wait(self, b: int) -> None:
        """Block until bucket `b` is filled."""
        with self._changed:
            self._changed.wait_for(lambda: self._count > b or self._error is not None)
            if self._count <= b:
                raise WeightSyncError(f"the snapshot failed before bucket {b} was filled: {self._error!r}")

    def sent(self, count: int) -> None:
        """The sender: the first `count` buckets are off the wire (or never will be: the send failed)."""
        with self._changed:
            self._sent = max(self._sent, count)
            self._changed.notify_all()

    def writable(self, b: int) -> None:
        """The filler: block until bucket `b`'s memory may be written."""
        if self.slots is not None:
            with self._changed:
                self._changed.wait_for(lambda: b < self._sent + self.slots)


BucketSource = Callable[[list[str]], AbstractContextManager[Mapping[str, Tensor]]]
"""names -> a context in which those tensors are whole and readable (e.g. gathered under ZeRO-3)."""


@torch.no_grad()
def fill_buckets(
    header: WeightUpdate, source: BucketSource, out: Mapping[str, Tensor] | None, ready: BucketsReady | None = None
) -> None:
    """Copy `header`'s tensors from `source` into `out` one bucket at a time, telling `ready` as each bucket is
    filled (and, into a ring, first waiting until the bucket's memory is off the wire). With `out` None the
    sources are still entered bucket by bucket (a ZeRO-3 rank other than 0 takes part in the gathers)."""
    for b, (start, end) in enumerate(header.bucket_ranges()):
        names = header.names[start:end]
        if ready is not None:
            ready.writable(b)
        with source(names) as params:
            if out is not None:
                for n in names:
                    out[n].copy_(params[n].detach())
        if ready is not None:
            ready.set(b + 1)


class Publisher:
    """Rank 0 of a weight-sync group, publishing while its caller goes on: each `publish` fills a snapshot in
    the wire's layout (`bucket_views`) on the caller's thread while one sender thread streams the filled
    buckets, so versions go out in publish order. A snapshot's memory is reused by a later publish of the same
    layout once its send is done: its pages stay resident on the CPU, as CUDA's caching allocators keep device
    and pinned memory. A send that failed is reported by `error`: the group is broken, build a new one.

    slots: snapshots are rings of that many buckets instead of whole copies (`bucket_views(..., slots)`): a
    publish then holds `slots` buckets of memory and returns only when its last bucket is filled, which needs
    the receivers to be receiving meanwhile."""

    def __init__(self, group: WeightSyncGroup, snapshot_device: torch.device, slots: int | None = None) -> None:
        self.group, self.snapshot_device, self.slots = group, snapshot_device, slots
        self.error: Exception | None = None  # why a send failed: the group is broken, build a new one
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-sync")  # one: sends in order
        self._sends: list[Future] = []
        self._spare: tuple[WeightUpdate, dict[str, Tensor]] | None = None  # a sent snapshot, for reuse
        self._lock = threading.Lock()

    def publish(self, header: WeightUpdate, fill: Callable[[dict[str, Tensor], BucketsReady], None]) -> Future:
        """Send `header`'s version: `fill(snapshot, ready)` copies it into the snapshot on this thread, bucket
        by bucket, telling `ready`; the filled buckets are already on the wire meanwhile. Returns once the
        snapshot is whole; the send goes on in the background: -> its future, done once every bucket is on the
        wire. If `fill` raises, the update goes out marked aborted (receivers raise at once) and the error
        propagates."""
        snapshot, ready = self._snapshot(header), BucketsReady(self.slots)
        self._sends = [f for f in self._sends if not f.done()]
        sending = self._sender.submit(self._send, snapshot, header, ready)
        self._sends.append(sending)
        try:
            fill(snapshot, ready)
        except BaseException as err:
            ready.fail(err)
            raise
        return sending

    def close(self, timeout_s: float | None = None) -> None:
        """Wait until every send has finished or failed (`error`), then stop the sender thread; TimeoutError
        if a send still runs."""
        wait(self._sends, timeout=timeout_s)
        if any(not f.done() for f in self._sends):
            raise TimeoutError(f"a weight broadcast is still running after {timeout_s:.0f} s")
        self._sender.shutdown()

    def _snapshot(self, header: WeightUpdate) -> dict[str, Tensor]:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and _same_layout(spare[0], header):
            return spare[1]
        pin = self.snapshot_device.type == "cpu" and torch.cuda.is_available()
        return bucket_views(header, self.snapshot_device, pin_memory=pin, slots=self.slots)

    def _send(self, snapshot: dict[str, Tensor], header: WeightUpdate, ready: BucketsReady) -> None:
        try:
            send(self.group, snapshot, header, ready)
        except Exception as err:
            self.error = err
            raise
        with self._lock:
            self._spare = (header, snapshot)


def _same_layout(a: WeightUpdate, b: WeightUpdate) -> bool:
    return (a.names, a.shapes, a.dtypes, a.bucket_ends) == (b.names, b.shapes, b.dtypes, b.bucket_ends)


@torch.no_grad()
def send(
    group: WeightSyncGroup, params: Mapping[str, Tensor], header: WeightUpdate, ready: BucketsReady | None = None
) -> None:
    """Rank 0: broadcast `params` bucket by bucket as `header` (from `describe(params, ...)`) lays them out,
    then the trailer of checksums. With `ready`, each bucket goes as soon as `ready` says it is filled, so the
    first buckets are on the wire while the caller still fills the rest. Blocks until everything is on the
    wire. When the filling fails, the remaining buckets still go out (unfilled) with a trailer marked aborted,
    so receivers raise at once instead of waiting out the group's timeout, and the group stays usable; then
    `send` raises that `WeightSyncError`."""
    try:
        _send(group, params, header, ready)
    finally:  # a ring filler never waits on a send that stopped
        if ready is not None:
            ready.sent(len(header.bucket_ends))


def _send(group: WeightSyncGroup, params: Mapping[str, Tensor], header: WeightUpdate, ready: BucketsReady | None):
    buffers = _BucketBuffers(header, group.device)
    trailer = _trailer(header, group.device)
    in_flight: deque[dist.Work] = deque()
    aborted: WeightSyncError | None = None
    for b, (start, end) in enumerate(header.bucket_ranges()):
        if len(in_flight) == 2:
            in_flight.popleft().wait()  # frees the buffer this bucket may pack into
            if ready is not None:
                ready.sent(b - 1)  # bucket b - 2 is off the wire: a ring may fill bucket b into its memory
        if ready is not None and aborted is None:
            try:
                ready.wait(b)
            except WeightSyncError as err:
                aborted, trailer[0, 1] = err, _ABORTED
        tensors = [params[n] for n in header.names[start:end]]
        wire = _span(tensors, group.device)
        if wire is None:
            wire = buffers.get(b, start, end)
            for piece, t in _pieces(wire, tensors):
                piece.copy_(t)
        in_flight.append(group.broadcast_async(wire))
        trailer[1 + b] = checksum(wire)  # while the bucket is on the wire
    in_flight.append(group.broadcast_async(trailer))
    for work in in_flight:
        work.wait()
    if aborted is not None:
        raise aborted


@torch.no_grad()
def receive(group: WeightSyncGroup, header: WeightUpdate, into: Mapping[str, Tensor]) -> None:
    """Ranks 1..N: receive the broadcast that `header` describes into `into`, bucket by bucket.

    `into` maps every name of `header.names` to a tensor of the header's shape and dtype on this rank's device
    (e.g. the worker's trainable parameters, or a staging copy from `bucket_views`); they are overwritten in
    place. Raises `WeightSyncError` before any byte moves when the names bind to nothing or differ, or a shape
    or dtype differs; and after the transfer when the sender sent another version or a bucket's bytes do not
    match the sender's checksum (`into` then holds bytes that must not be used). Every receiver must call it,
    concurrently with `send`.
    """
    check_binds(header, into)
    buffers = _BucketBuffers(header, group.device)
    got, sent = _trailer(header, group.device), _trailer(header, group.device)
    pending: deque[tuple[int, list[Tensor], Tensor, bool, dist.Work]] = deque()

    def land(b: int, targets: list[Tensor], wire: Tensor, packed: bool, work: dist.Work) -> None:
        work.wait()
        got[1 + b] = checksum(wire)  # while the next bucket is on the wire
        if packed:
            for piece, t in _pieces(wire, targets):
                t.copy_(piece)

    for b, (start, end) in enumerate(header.bucket_ranges()):
        targets = [into[n] for n in header.names[start:end]]
        span = _span(targets, group.device)
        wire = buffers.get(b, start, end) if span is None else span
        pending.append((b, targets, wire, span is None, group.broadcast_async(wire)))
        if len(pending) == 2:
            land(*pending.popleft())
    trailer = group.broadcast_async(sent)
    while pending:
        land(*pending.popleft())
    trailer.wait()
    _verify(header, got.tolist(), sent.tolist())


def check_binds(header: WeightUpdate, into: Mapping[str, Tensor]) -> None:
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
def checksum(wire: Tensor) -> Tensor:
    """[16] int64: the wrapping sums of the 8-byte words of a 1-d contiguous tensor's bytes (zero-padded to
    whole rows of 16 words), one per column. One pass at memory speed; any changed byte changes a column, and a
    word moved to another column (index mod 16) changes two. Equal bytes give equal sums on CPU and GPU alike."""
    raw = wire.view(torch.uint8)
    if raw.storage_offset() % 8:  # int64 views need 8-byte aligned data
        raw = raw.clone()
    body = raw.numel() // _ROW_BYTES * _ROW_BYTES
    tail = torch.zeros(_ROW_BYTES, dtype=torch.uint8, device=raw.device)
    tail[: raw.numel() - body] = raw[body:]
    return raw[:body].view(torch.int64).view(-1, _WORDS).sum(0) + tail.view(torch.int64)


def _trailer(header: WeightUpdate, device: torch.device) -> Tensor:
    """[1 + B, 16] int64, sent after the buckets: row 0 holds the version and the abort flag, row 1 + b is bucket
    b's checksum."""
    trailer = torch.zeros(1 + len(header.bucket_ends), _WORDS, dtype=torch.int64, device=device)
    trailer[0, 0] = header.version
    return trailer


def _verify(header: WeightUpdate, got: list[list[int]], sent: list[list[int]]) -> None:
    """Raise unless the received trailer `sent` is the version of `header` with the checksums `got` here."""
    if sent[0][1] == _ABORTED:
        raise WeightSyncError(
            f"weight update v{header.version} was aborted by the sender (its snapshot failed part way); the "
            "received bytes must not be used"
        )
    if sent[0][0] != header.version:
        raise WeightSyncError(
            f"weight update v{header.version}: the sender sent v{sent[0][0]} instead; a receive was paired with "
            "another version's broadcast (a different version: receives must follow publishes in order)"
        )
    for b, ((start, end), here, there) in enumerate(zip(header.bucket_ranges(), got[1:], sent[1:], strict=True)):
        if here != there:
            raise WeightSyncError(
                f"weight update v{header.version}: bucket {b} of {len(header.bucket_ends)} ({header.names[start]} "
                f"to {header.names[end - 1]}) arrived with a different checksum than sent; sender and receiver "
                "disagree on its bytes (a broken transfer)"
            )


def _span(tensors: list[Tensor], device: torch.device) -> Tensor | None:
    """The tensors as one 1-d tensor over their own memory when they are contiguous and lie back to back, in
    this order, in one storage on `device`; else None."""
    first = tensors[0].detach()
    storage, end = first.untyped_storage().data_ptr(), first.data_ptr()
    for t in tensors:
        same_storage = t.untyped_storage().data_ptr() == storage and t.data_ptr() == end
        if t.device != device or not t.is_contiguous() or not same_storage:
            return None
        end += t.numel() * t.element_size()
    return first.as_strided((sum(t.numel() for t in tensors),), (1,))


def _pieces(wire: Tensor, tensors: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
    """(the part of `wire` that holds t, shaped as t; t) for each tensor t of a bucket, in order."""
    offset = 0
    for t in tensors:
        yield wire[offset : offset + t.numel()].view(t.shape), t
        offset += t.numel()


class _BucketBuffers:
    """`slots` reusable byte buffers of the largest bucket, each allocated on first use: bucket b is viewed in
    buffer b % slots as its dtype and length."""

    def __init__(self, header: WeightUpdate, device: torch.device, slots: int = 2, pin_memory: bool = False) -> None:
        self.header, self.device, self.pin_memory = header, device, pin_memory
        self._raw: list[Tensor | None] = [None] * slots

    def get(self, b: int, start: int, end: int) -> Tensor:
        dtype = _dtype(self.header, start)
        numel = sum(torch.Size(s).numel() for s in self.header.shapes[start:end])
        slot = b % len(self._raw)
        if (raw := self._raw[slot]) is None:
            raw = self._raw[slot] = torch.empty(
                self.header.max_bucket_bytes(), dtype=torch.uint8, device=self.device, pin_memory=self.pin_memory
            )
        return raw[: numel * dtype.itemsize].view(dtype)


def _dtype(header: WeightUpdate, index: int) -> torch.dtype:
    return getattr(torch, header.dtypes[index])


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

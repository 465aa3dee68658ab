"""Weight sync: the learner's publish (a `Publisher`: snapshot + bucketed send, receivers `receive` with
checksum verification) against a raw broadcast of the same bytes into a preallocated buffer, to 2 receiver
processes, in one run.

    python benchmarks/bench_weight_sync.py                       # CPU, gloo
    python benchmarks/bench_weight_sync.py --device cuda         # NCCL, one GPU per rank (needs 3 GPUs)

Sets: (a) the tiny recipe's LoRA adapter, (b) 15 random fp32 tensors of 3072x3072 (566 MB). A publish is
timed from the sender's first step until every receiver has its weights (verified) and answered a 1-element
barrier; the median of `--repeats` runs. It is what `GRPOLearner.publish_weights` does on rank 0: a
`Publisher` fills the snapshot (`fill_buckets`) on the calling thread while its sender thread already
broadcasts the filled buckets, and receivers receive into a `bucket_views` staging copy allocated once (a
rollout worker's). 'publish' is the steady state, where the snapshot reuses the memory of the previous one;
'first' is the first publish, into fresh memory.

Peak memory: `send` and `receive` of plain tensors (one per parameter, so buckets of several tensors are
packed and unpacked through bucket buffers) raise this process's peak above the tensors themselves by the
figures shown, in units of the bucket size (sender; worst receiver): the bound is two buckets. The snapshot
itself is one copy of the trained parameters, on the device or (`learner.sync_snapshot: cpu`) in CPU memory.

The raw broadcast sends one preallocated flat tensor into preallocated flat tensors, with no snapshot. Each
rank runs `--threads` intra-op threads (default 1, as in a Ray actor with one CPU: Ray sets OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import TypeVar

import torch
import torch.multiprocessing as mp
from torch import Tensor

from flexgrpo.records import WeightUpdate
from flexgrpo.weight_transport import Publisher, WeightSyncGroup, bucket_views, describe, fill_buckets, receive, send

RECEIVERS = 2
T = TypeVar("T")


class PeakMemory:
    """Rise of this process's peak resident memory (CPU; Linux's VmHWM, reset on entry) or of its peak
    allocated CUDA memory while inside, above the level at entry."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.rise = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS
            self._base = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.rise = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.rise = _status_bytes("VmHWM") - self._base


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def device_of(rank: int, kind: str) -> torch.device:
    return torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")


def plain(header: WeightUpdate, device: torch.device) -> dict[str, Tensor]:
    """One tensor per name, shaped as `header` says."""
    return {
        n: torch.empty(s, dtype=getattr(torch, d), device=device)
        for n, s, d in zip(header.names, header.shapes, header.dtypes, strict=True)
    }


LAYOUTS: dict[str, Callable[[WeightUpdate, torch.device], dict[str, Tensor]]] = {
    "publish": bucket_views,
    "plain": plain,
}
"""how a receiver holds its staging copy: for the timed publishes, and for the peak memory of packing"""


def receiver(rank: int, port: int, kind: str, threads: int, jobs: mp.Queue, reports: mp.Queue) -> None:
    """Per set: a 'setup' job allocates (and touches) the raw buffer and each layout's staging copy once,
    as a worker holds its staging copy; then 'raw' and layout jobs receive into them. After each job it
    answers a barrier and reports (CPU seconds of this process for the job, rise of peak memory: 'plain' only)."""
    torch.set_num_threads(threads)
    device = device_of(rank, kind)
    if kind == "cuda":
        torch.cuda.set_device(device)
    group = WeightSyncGroup("127.0.0.1", port, rank, 1 + RECEIVERS, device)
    done = torch.zeros(1, device=device)
    while (job := jobs.get()) is not None:
        what, header = job
        cpu, peak = time.process_time(), PeakMemory(device)
        if what == "setup":
            flat = torch.zeros(header.numel, dtype=torch.float32, device=device)
            staging = {layout: allocate(header, device) for layout, allocate in LAYOUTS.items()}
            for tensors in staging.values():
                for t in tensors.values():
                    t.zero_()  # resident, as a worker's staging copy is after its first update
        elif what == "raw":
            group.broadcast_async(flat).wait()
        elif what == "plain":
            with peak:
                receive(group, header, staging[what])
        else:
            receive(group, header, staging[what])
        group.broadcast_async(done).wait()
        reports.put((time.process_time() - cpu, peak.rise))


def tiny_lora() -> dict[str, Tensor]:
    from actors.policies import build_policy
    from actors.policies.base import trainable_parameters
    from flexgrpo.config import load_config

    policy = build_policy(load_config(None, []).policy)
    return {n: p.detach() for n, p in trainable_parameters(policy.transformer).items()}


def source(params: dict[str, Tensor]):
    """`params` as a `BucketSource`: always whole."""
    return lambda names: nullcontext(params)


def publish(publisher: Publisher, params: dict[str, Tensor], bucket_mb: float) -> None:
    """What learner rank 0 does per publish, until every bucket is on the wire."""
    header = describe(params, 0, bucket_mb)
    publisher.publish(header, lambda out, ready: fill_buckets(header, source(params), out, ready)).result()


def plain_send_peak(group: WeightSyncGroup, params: dict[str, Tensor], header: WeightUpdate) -> int:
    """The rise of peak memory while `send` broadcasts a filled snapshot of plain tensors."""
    snapshot = plain(header, group.device)
    fill_buckets(header, source(params), snapshot)
    with PeakMemory(group.device) as peak:
        send(group, snapshot, header)
    return peak.rise


def timed(group: WeightSyncGroup, jobs: list[mp.Queue], reports: mp.Queue, what: str, header, body: Callable[[], T]):
    """-> (seconds from the sender's first call until every receiver has answered the barrier after its part,
    CPU seconds of all ranks for it (on a machine with fewer cores than ranks, their sum bounds the time),
    the receivers' peak memory rises, what `body` returned)"""
    for q in jobs:
        q.put((what, header))
    start, cpu = time.perf_counter(), time.process_time()
    out = body()
    group.broadcast_async(torch.zeros(1, device=group.device)).wait()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    received = [reports.get() for _ in jobs]
    return seconds, cpu + sum(c for c, _ in received), [p for _, p in received], out


def measure(group, jobs, reports, params: dict[str, Tensor], bucket_mb: float, repeats: int) -> dict[str, float]:
    """-> median seconds and CPU seconds of 'raw', 'publish' (whole snapshots) and 'ring' (`sync_snapshot:
    none`: a ring of two buckets); seconds of the 'first' publish (fresh snapshot memory); peak memory bytes
    of the first ring publish ('ring peak'), of `send` and of the worst `receive` of plain tensors"""
    flat = torch.cat([t.reshape(-1) for t in params.values()])
    header = describe(params, 0, bucket_mb)
    run = partial(timed, group, jobs, reports)
    run("setup", header, lambda: None)
    publishers = {"publish": Publisher(group, group.device), "ring": Publisher(group, group.device, slots=2)}
    bodies = {mode: partial(publish, p, params, bucket_mb) for mode, p in publishers.items()}
    first, *_ = run("publish", header, bodies["publish"])
    with PeakMemory(group.device) as ring_peak:
        run("publish", header, bodies["ring"])
    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "publish": [], "ring": []}
    for _ in range(repeats):
        runs["raw"].append(run("raw", header, lambda: group.broadcast_async(flat).wait())[:2])
        for mode, body in bodies.items():
            runs[mode].append(run("publish", header, body)[:2])
    for publisher in publishers.values():
        publisher.close()
    _, _, recv_peaks, send_peak = run("plain", header, partial(plain_send_peak, group, params, header))
    medians = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
    cpu = {f"{k} cpu": statistics.median(c for _, c in v) for k, v in runs.items()}
    peaks = {"ring peak": ring_peak.rise, "send peak": send_peak, "recv peak": max(recv_peaks)}
    return medians | cpu | peaks | {"first": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--buckets-mb", type=float, nargs="+", default=[32.0, 128.0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and torch.cuda.device_count() < 1 + RECEIVERS:
        raise SystemExit(f"--device cuda needs {1 + RECEIVERS} GPUs (NCCL: one rank per GPU)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    jobs, reports = [ctx.Queue() for _ in range(RECEIVERS)], ctx.Queue()
    procs = [
        ctx.Process(target=receiver, args=(1 + i, port, args.device, args.threads, jobs[i], reports))
        for i in range(RECEIVERS)
    ]
    for p in procs:
        p.start()
    device = device_of(0, args.device)
    group = WeightSyncGroup("127.0.0.1", port, 0, 1 + RECEIVERS, device)

    g = torch.Generator().manual_seed(0)
    sets = {
        "tiny LoRA": {n: t.to(device) for n, t in tiny_lora().items()},
        "random 566 MB": {f"blocks.{i}.weight": torch.randn(3072, 3072, generator=g).to(device) for i in range(15)},
    }
    columns = {  # header: (width, format of a row's measurements m, the set's bytes n, the bucket's bytes b)
        "set": (14, None),
        "bucket MiB": (10, None),
        "MB": (8, lambda m, n, b: f"{n / 1e6:.2f}"),
        "raw s": (8, lambda m, n, b: f"{m['raw']:.4f}"),
        "publish s": (10, lambda m, n, b: f"{m['publish']:.4f}"),
        "GB/s": (6, lambda m, n, b: f"{n / m['publish'] / 1e9:.2f}"),
        "ratio": (6, lambda m, n, b: f"{m['raw'] / m['publish']:.2f}"),
        "ring s": (8, lambda m, n, b: f"{m['ring']:.4f}"),
        "ring ratio": (10, lambda m, n, b: f"{m['raw'] / m['ring']:.2f}"),
        "raw CPU s": (9, lambda m, n, b: f"{m['raw cpu']:.3f}"),
        "publish CPU s": (13, lambda m, n, b: f"{m['publish cpu']:.3f}"),
        "first s": (8, lambda m, n, b: f"{m['first']:.4f}"),
        "ring peak/bucket": (16, lambda m, n, b: f"{m['ring peak'] / b:.2f}"),
        "plain send peak/bucket": (22, lambda m, n, b: f"{m['send peak'] / b:.2f}"),
        "plain recv peak/bucket": (22, lambda m, n, b: f"{m['recv peak'] / b:.2f}"),
    }
    print(" ".join(f"{name:>{width}}" for name, (width, _) in columns.items()))
    for name, params in sets.items():
        nbytes = sum(t.numel() * t.element_size() for t in params.values())
        for bucket_mb in args.buckets_mb if nbytes > 2**20 else args.buckets_mb[:1]:
            m = measure(group, jobs, reports, params, bucket_mb, args.repeats)
            cells = [f"{name:>14}", f"{bucket_mb:>10g}"]
            cells += [f"{cell(m, nbytes, bucket_mb * 2**20):>{w}}" for w, cell in list(columns.values())[2:]]
            print(" ".join(cells))
    for q in jobs:
        q.put(None)
    for proc in procs:
        proc.join()


if __name__ == "__main__":
    main()

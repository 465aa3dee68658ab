"""Weight sync: a bucketed publish (`describe` + `send`, receivers `receive` with checksum verification)
against a raw broadcast of the same bytes into a preallocated buffer, to 2 receiver processes, in one run.

    python benchmarks/bench_weight_sync.py                       # CPU, gloo
    python benchmarks/bench_weight_sync.py --device cuda         # NCCL, one GPU per rank (needs 3 GPUs)

Sets: (a) the tiny recipe's LoRA adapter, (b) 15 random fp32 tensors of 3072x3072 (566 MB). Times run from
the sender's first call until every receiver has its weights (verified) and answered a 1-element barrier; the
median of `--repeats` runs. Peak extra memory: the largest rise of resident memory (CPU) or of allocated CUDA
memory during a publish, above the parameters, in units of the bucket size (sender and worst receiver).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

import torch
import torch.multiprocessing as mp

from flexgrpo.weight_transport import WeightSyncGroup, describe, receive, send

RECEIVERS = 2


class PeakMemory:
    """Largest rise of this process's resident memory (CPU) or allocated CUDA memory while inside."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.rise = device, 0

    def _now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        self._base, self._done = self._now(), threading.Event()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = self._base
            self._thread = threading.Thread(target=self._watch)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(0.0005):
            self._peak = max(self._peak, self._now())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.rise = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._done.set()
            self._thread.join()
            self.rise = max(self._peak, self._now()) - self._base


def device_of(rank: int, kind: str) -> torch.device:
    return torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")


def receiver(rank: int, port: int, kind: str, jobs: mp.Queue, peaks: mp.Queue) -> None:
    device = device_of(rank, kind)
    if kind == "cuda":
        torch.cuda.set_device(device)
    group = WeightSyncGroup("127.0.0.1", port, rank, 1 + RECEIVERS, device)
    done = torch.zeros(1, device=device)
    while (job := jobs.get()) is not None:
        what, header = job
        if what == "raw":
            flat = torch.empty(header.numel, dtype=torch.float32, device=device)
            group.broadcast(flat)
        else:
            into = {
                n: torch.zeros(s, dtype=getattr(torch, d), device=device)
                for n, s, d in zip(header.names, header.shapes, header.dtypes, strict=True)
            }
            with PeakMemory(device) as peak:
                receive(group, header, into)
            peaks.put(peak.rise)
        group.broadcast(done)


def tiny_lora() -> dict[str, torch.Tensor]:
    from actors.policies import build_policy
    from actors.policies.base import trainable_parameters
    from flexgrpo.config import load_config

    policy = build_policy(load_config(None, []).policy)
    return {n: p.detach() for n, p in trainable_parameters(policy.transformer).items()}


def timed(group: WeightSyncGroup, jobs: list[mp.Queue], what: str, header, body) -> float:
    """Seconds from the sender's first call until every receiver has answered the barrier after its part."""
    for q in jobs:
        q.put((what, header))
    start = time.perf_counter()
    body()
    group.broadcast(torch.zeros(1, device=group.device))
    return time.perf_counter() - start


def measure(group, jobs, peaks, params: dict[str, torch.Tensor], bucket_mb: float, repeats: int):
    """-> (median raw s, median publish s, sender peak bytes, worst receiver peak bytes)"""
    flat = torch.cat([t.reshape(-1) for t in params.values()])
    header = describe(params, 0, bucket_mb)
    raw, pub, send_peak, recv_peak = [], [], 0, 0
    for _ in range(repeats):
        raw.append(timed(group, jobs, "raw", header, lambda: group.broadcast(flat)))
        with PeakMemory(group.device) as peak:
            pub.append(
                timed(group, jobs, "publish", header, lambda: send(group, params, describe(params, 0, bucket_mb)))
            )
        send_peak = max(send_peak, peak.rise)
        recv_peak = max([recv_peak] + [peaks.get() for _ in jobs])
    return statistics.median(raw), statistics.median(pub), send_peak, recv_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--buckets-mb", type=float, nargs="+", default=[32.0, 128.0])
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 1 + RECEIVERS:
        raise SystemExit(f"--device cuda needs {1 + RECEIVERS} GPUs (NCCL: one rank per GPU)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    jobs, peaks = [ctx.Queue() for _ in range(RECEIVERS)], ctx.Queue()
    procs = [ctx.Process(target=receiver, args=(1 + i, port, args.device, jobs[i], peaks)) for i in range(RECEIVERS)]
    for p in procs:
        p.start()
    device = device_of(0, args.device)
    group = WeightSyncGroup("127.0.0.1", port, 0, 1 + RECEIVERS, device)

    g = torch.Generator().manual_seed(0)
    sets = {
        "tiny LoRA": {n: t.to(device) for n, t in tiny_lora().items()},
        "random 566 MB": {f"blocks.{i}.weight": torch.randn(3072, 3072, generator=g).to(device) for i in range(15)},
    }
    print(
        f"{'set':<14} {'bucket MiB':>10} {'MB':>8} {'raw s':>8} {'publish s':>10} {'GB/s':>6} {'ratio':>6}"
        f" {'send peak/bucket':>17} {'recv peak/bucket':>17}"
    )
    for name, params in sets.items():
        nbytes = sum(t.numel() * t.element_size() for t in params.values())
        for bucket_mb in args.buckets_mb if nbytes > 2**20 else args.buckets_mb[:1]:
            r, p, send_peak, recv_peak = measure(group, jobs, peaks, params, bucket_mb, args.repeats)
            bucket = bucket_mb * 2**20
            print(
                f"{name:<14} {bucket_mb:>10g} {nbytes / 1e6:>8.2f} {r:>8.4f} {p:>10.4f} {nbytes / p / 1e9:>6.2f}"
                f" {r / p:>6.2f} {send_peak / bucket:>17.2f} {recv_peak / bucket:>17.2f}"
            )
    for q in jobs:
        q.put(None)
    for proc in procs:
        proc.join()


if __name__ == "__main__":
    main()

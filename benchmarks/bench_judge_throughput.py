"""Pairwise judging throughput: the in-process batched vLLM engine vs per-request HTTP to a vLLM server.

    python benchmarks/bench_judge_throughput.py [--group-size 9] [--image-sizes 64 512] [--threads 16]
    python benchmarks/bench_judge_throughput.py --scenario step [--groups 8] [--group-size 9]

Scenario "step": all pairs of a learner step's groups (8 groups of G = 9: 288 pairs) on one reward worker
(`RewardWorker.score_many`: every group's requests in one engine batch) against the authors' way (an OpenAI
server, 16 client threads, one request per pair, JPEG images), same tiny judge, same machine, same run.

Both paths run the same UnifiedReward-Flex judge code on the same tiny Qwen2.5-VL judge and the same groups
(C(G, 2) pairs, greedy replies, no structured outputs, no retries): the engine path sends a group's requests
as one `llm.chat` batch; the HTTP path sends one request per pair (images as base64 JPEG) from a pool of
`--threads` threads. Groups of each image size are judged (the judge downsizes every image to 56x56, so only
the transport cost grows with the size). Each engine runs one unbound CPU thread (the vLLM-CPU default of one
bound thread per core crawls on a shared machine). Prints comparisons/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.backends import HttpBackend, VllmBackend
from reward_workers.base import RewardModel
from reward_workers.judges import FLEX, PairwiseJudge
from reward_workers.openai_server import start_openai_server, stop_server, wait_until_healthy
from reward_workers.reward_worker import RewardWorker
from reward_workers.tiny_judge import tiny_judge_path

ENGINE_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def time_pairs_per_s(judge: RewardModel, group: MediaGroup, repeats: int) -> tuple[float, float]:
    """Median comparisons/s over `repeats` scorings of `group` (after one warm-up), and the median seconds."""
    judge.score(group)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = judge.score(group)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return out.requests / median, median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=9, help="G: a group has C(G, 2) pairs")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[64, 512], help="square image sides")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="reply length cap")
    parser.add_argument("--threads", type=int, default=16, help="HTTP client threads (requests in flight)")
    parser.add_argument("--repeats", type=int, default=3, help="timed scorings per path and size (median)")
    parser.add_argument("--scenario", choices=["group", "step"], default="group", help="one group, or a step")
    parser.add_argument("--groups", type=int, default=8, help="step: groups scored together")
    args = parser.parse_args()
    if args.scenario == "step":
        step_scenario(args)
        return

    model = str(tiny_judge_path())
    spec = RewardSpec(
        name="unifiedreward_flex", model=model, max_new_tokens=args.max_new_tokens, max_retries=0, temperature=0.0
    )
    groups = {size: media_group(args.group_size, size) for size in args.image_sizes}
    http_path, engine_path = f"HTTP, {args.threads} threads, 1 request/pair", "in-process engine, 1 call/group"
    results: dict[tuple[str, int], tuple[float, float]] = {}

    # 1. HTTP: a vLLM OpenAI server process, one request per pair from a thread pool
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkdtemp(prefix="judge-bench-")) / "server.log"
    server = start_openai_server(model, "tiny-judge", port, max_images=2, log_file=log, extra_env=ENGINE_ENV)
    try:
        wait_until_healthy(server, port, timeout_s=300)
        backend = HttpBackend(f"http://127.0.0.1:{port}/v1", "tiny-judge", max_concurrency=args.threads)
        http_judge = PairwiseJudge(backend, spec, FLEX)
        for size, group in groups.items():
            results[http_path, size] = time_pairs_per_s(http_judge, group, args.repeats)
        http_judge.close()
    finally:
        stop_server(server)

    # 2. In-process engine, a whole group in one batched call
    os.environ.update({k: v for k, v in ENGINE_ENV.items() if k != "OMP_NUM_THREADS"})
    torch.set_num_threads(1)
    engine_judge = PairwiseJudge(VllmBackend(model, max_images=2), spec, FLEX)
    for size, group in groups.items():
        results[engine_path, size] = time_pairs_per_s(engine_judge, group, args.repeats)
    engine_judge.close()

    pairs = args.group_size * (args.group_size - 1) // 2
    print(f"\nUnifiedReward-Flex judge, tiny Qwen2.5-VL, G={args.group_size} ({pairs} pairs per group), "
          f"max_new_tokens={args.max_new_tokens}, median of {args.repeats}")  # fmt: skip
    print(f"| {'path':<38} | {'image':>7} | {'s/group':>8} | {'pairs/s':>8} |")
    print(f"| {'-' * 38} | {'-' * 7} | {'-' * 8} | {'-' * 8} |")
    for (name, size), (rate, seconds) in results.items():
        print(f"| {name:<38} | {f'{size}px':>7} | {seconds:>8.2f} | {rate:>8.1f} |")
    for size in args.image_sizes:
        ratio = results[engine_path, size][0] / results[http_path, size][0]
        print(f"{size}px: engine / HTTP = {ratio:.2f}x (target >= 3)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_scenario(args: argparse.Namespace) -> None:
    """All pairs of `--groups` groups: one reward worker's engine batch vs the authors' per-pair HTTP clients."""
    model = str(tiny_judge_path())
    fields = {"name": "unifiedreward_flex", "model": model, "max_new_tokens": args.max_new_tokens}
    fields |= {"max_retries": 0, "temperature": 0.0}  # greedy, no retries: both paths do the same work
    groups = [media_group(args.group_size, args.image_sizes[0], seed=k) for k in range(args.groups)]
    pairs = len(groups) * args.group_size * (args.group_size - 1) // 2
    timings: dict[str, float] = {}

    # 1. the authors' way: an OpenAI server, `--threads` client threads, one request per pair
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="judge-bench-")) / "server.log"
    server = start_openai_server(model, "tiny-judge", port, max_images=2, log_file=log, extra_env=ENGINE_ENV)
    try:
        wait_until_healthy(server, port, timeout_s=300)
        backend = HttpBackend(f"http://127.0.0.1:{port}/v1", "tiny-judge", max_concurrency=args.threads)
        http_judge = PairwiseJudge(backend, RewardSpec(**fields), FLEX)
        http_judge.score(groups[0])  # warm-up
        start = time.perf_counter()
        outputs = http_judge.score_many(groups)
        timings[f"OpenAI server, {args.threads} threads, 1 request/pair"] = time.perf_counter() - start
        assert sum(o.requests for o in outputs) == pairs
        http_judge.close()
    finally:
        stop_server(server)

    # 2. one reward worker: the step's groups in one engine batch
    os.environ.update({k: v for k, v in ENGINE_ENV.items() if k != "OMP_NUM_THREADS"})
    torch.set_num_threads(1)
    worker = RewardWorker([RewardSpec(**fields)])
    worker.score(groups[0])  # warm-up
    start = time.perf_counter()
    scored = worker.score_many(groups)
    timings["reward worker, in-process engine, score_many"] = time.perf_counter() - start
    assert sum(s.requests for s in scored) == pairs
    worker.swap([RewardSpec(name="jpeg_compressibility")], 1)  # releases the engine

    print(f"\nstep: {args.groups} groups of G={args.group_size} ({pairs} pairs), tiny Qwen2.5-VL judge, "
          f"{args.image_sizes[0]}px, max_new_tokens={args.max_new_tokens}, greedy")  # fmt: skip
    print(f"| {'path':<46} | {'s/step':>7} | {'pairs/s':>8} |")
    print(f"| {'-' * 46} | {'-' * 7} | {'-' * 8} |")
    for name, seconds in timings.items():
        print(f"| {name:<46} | {seconds:>7.2f} | {pairs / seconds:>8.1f} |")
    http_s, engine_s = timings.values()
    print(f"reward worker / authors' way = {http_s / engine_s:.2f}x (target >= 3)")


def media_group(group_size: int, image_size: int, seed: int = 0) -> MediaGroup:
    shape = (group_size, image_size, image_size, 3)
    media = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    group_id = f"bench-{image_size}-{seed}"
    return MediaGroup(group_id=group_id, prompt="a red cat on a blue car", policy_version=0, media=media)


if __name__ == "__main__":
    main()

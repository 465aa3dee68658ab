"""The same tiny judge behind a real vLLM OpenAI server process on loopback, judged through the HTTP backend:
structured outputs (response_format JSON schema, regex) make every reply parse."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.openai_server import start_openai_server, stop_server, wait_until_healthy
from reward_workers.registry import build_reward
from reward_workers.tiny_judge import tiny_judge_path

pytestmark = pytest.mark.slow
SERVED_NAME = "tiny-judge"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("judge-server") / "server.log"
    process = start_openai_server(
        str(tiny_judge_path()),
        SERVED_NAME,
        port,
        log_file=log,
        # one unbound thread: the default binds a thread per core and crawls on a small shared machine
        extra_env={
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        },
    )
    try:
        wait_until_healthy(process, port, timeout_s=240)
    except Exception:
        stop_server(process)
        pytest.fail(f"judge server did not start:\n{_tail(log)}")
    yield f"http://127.0.0.1:{port}/v1"
    stop_server(process)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def media_group(group_size: int, frames: int | None = None) -> MediaGroup:
    shape = (group_size, 64, 64, 3) if frames is None else (group_size, frames, 64, 64, 3)
    media = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    return MediaGroup(group_id="g5", prompt="a red cat on a blue car", policy_version=0, media=media)


def http_spec(name: str, url: str, **overrides: object) -> RewardSpec:
    fields = {
        "name": name,
        "model": SERVED_NAME,
        "backend": "http",
        "url": url,
        "structured_output": True,
        "structured_text_chars": 3,
        "max_new_tokens": 2048,
        "temperature": 0.0,  # greedy: the random judge's replies are the same every run
        "protocol": "robust",  # its random strings hold raw control characters, which strict JSON refuses
        "max_concurrency": 4,
        "timeout_s": 60.0,
    }
    return RewardSpec(**(fields | overrides))  # type: ignore[arg-type]


def test_flex_over_http_parses_every_reply(server_url: str) -> None:
    judge = build_reward(http_spec("unifiedreward_flex", server_url))
    try:
        out = judge.score(media_group(4))
    finally:
        judge.close()
    assert out.unparsed == 0 and out.requests == 6
    assert ((out.rewards >= 0) & (out.rewards <= 1)).all()
    assert out.rewards.sum().item() == pytest.approx(2.0)
    pairs = [d for d in out.details if d["kind"] == "pair"]
    assert all(list(d["categories"])[:3] == ["A", "B", "C"] for d in pairs)  # and maybe a category D


def test_video_think_and_pointwise_over_http(server_url: str) -> None:
    think = build_reward(http_spec("unifiedreward_think", server_url, structured_text_chars=24))
    pointwise = build_reward(http_spec("unifiedreward_2", server_url, max_new_tokens=64))
    try:
        out = think.score(media_group(3, frames=9))  # 16 images per request
        assert out.unparsed == 0 and out.requests == 3
        assert out.rewards.sum().item() == pytest.approx(1.5)
        out = pointwise.score(media_group(3))
        assert out.unparsed == 0 and ((out.rewards >= 0) & (out.rewards <= 1)).all()
    finally:
        think.close()
        pointwise.close()

"""The tiny Qwen2.5-VL judge on an in-process vLLM engine scores real groups; structured outputs make every
reply parse; a group's requests go to the engine as one batch, and so do several groups (`score_many`, or
groups scored from several threads at once); judges on one model share one engine."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers import backends
from reward_workers.base import RewardModel
from reward_workers.registry import build_reward
from reward_workers.tiny_judge import TINY_JUDGE

pytestmark = pytest.mark.slow


def judge_spec(name: str, **overrides: object) -> RewardSpec:
    fields = {
        "name": name,
        "model": TINY_JUDGE,
        "backend": "vllm",
        "structured_output": True,
        "structured_text_chars": 3,  # random text: short fields keep a full Flex reply under max_new_tokens
        "max_new_tokens": 2048,  # 16 dims and an optional category D of random text fit
        "temperature": 0.0,  # greedy: the random judge's replies are the same every run
        "protocol": "robust",  # its random strings hold raw control characters, which strict JSON refuses
    }
    return RewardSpec(**(fields | overrides))  # type: ignore[arg-type]


def media_group(group_size: int, frames: int | None = None, seed: int = 0) -> MediaGroup:
    shape = (group_size, 64, 64, 3) if frames is None else (group_size, frames, 64, 64, 3)
    media = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return MediaGroup(group_id=f"g{seed}", prompt="a red cat on a blue car", policy_version=0, media=media)


@pytest.fixture(scope="module")
def single_thread_engine() -> Iterator[None]:
    """vLLM-CPU with one unbound thread: on a small shared machine its default (a thread per core, bound)
    spins against other processes and runs ~40x slower. The engine replaces torch.set_num_threads: restore
    it afterwards."""
    saved_env = {k: os.environ.get(k) for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")}
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads = set_num_threads
    torch.set_num_threads(threads)
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def flex(single_thread_engine: None) -> Iterator[RewardModel]:
    judge = build_reward(judge_spec("unifiedreward_flex"))
    yield judge
    judge.close()
    assert not backends._ENGINES  # the last judge on the engine shut it down


def count_chat_calls(judge: RewardModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the shared engine: the number of conversations in each `llm.chat` call."""
    llm = judge.backend.engine.llm  # type: ignore[attr-defined]
    calls: list[int] = []
    chat = llm.chat

    def spy(conversations, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(len(conversations))
        return chat(conversations, *args, **kwargs)

    monkeypatch.setattr(llm, "chat", spy)
    return calls


def test_flex_scores_an_image_group_in_one_batch(flex: RewardModel, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_chat_calls(flex, monkeypatch)
    out = flex.score(media_group(4))
    assert calls == [6]  # C(4, 2) pairs, one engine call
    assert out.unparsed == 0 and out.requests == 6
    assert out.rewards.shape == (4,) and out.rewards.dtype == torch.float32
    assert ((out.rewards >= 0) & (out.rewards <= 1)).all()
    assert out.rewards.sum().item() == pytest.approx(2.0)  # each pair hands out one point: mean reward 0.5
    pairs = [d for d in out.details if d["kind"] == "pair"]
    assert all(d["parsed"] and list(d["categories"])[:3] == ["A", "B", "C"] for d in pairs)
    assert all(d["reply"]["categories"][0]["name"] == "A. Semantic Alignment & Accuracy" for d in pairs)
    json.dumps(out.details)


def test_flex_scores_a_video_group_with_16_images_per_request(flex: RewardModel) -> None:
    out = flex.score(media_group(3, frames=10, seed=1))
    assert out.unparsed == 0 and out.requests == 3
    assert out.rewards.sum().item() == pytest.approx(1.5)
    pairs = [d for d in out.details if d["kind"] == "pair"]
    assert all(d["reply"]["winner"] in ("Video 1", "Video 2") for d in pairs)


def test_fewer_pairs_per_sample(flex: RewardModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flex, "spec", judge_spec("unifiedreward_flex", pairs_per_sample=2))
    calls = count_chat_calls(flex, monkeypatch)
    out = flex.score(media_group(6, seed=2))
    assert calls == [6] and out.requests == 6 and out.unparsed == 0  # a ring: 6 pairs instead of 15


def test_think_and_pointwise_share_the_engine(flex: RewardModel) -> None:
    think = build_reward(judge_spec("unifiedreward_think", both_orders=True, structured_text_chars=24))
    pointwise = build_reward(judge_spec("unifiedreward_2", max_new_tokens=64))
    try:
        assert len(backends._ENGINES) == 1 and think.backend.engine is flex.backend.engine  # type: ignore[attr-defined]
        group = media_group(3, seed=3)
        out = think.score(group)
        assert out.unparsed == 0 and out.requests == 6  # both orders of 3 pairs
        assert out.rewards.sum().item() == pytest.approx(1.5)
        assert all(d["reply"]["answer"].endswith("is better") for d in out.details if d["kind"] == "pair")
        out = pointwise.score(media_group(3, frames=12, seed=4))
        assert out.unparsed == 0 and out.requests == 3
        assert ((out.rewards >= 0) & (out.rewards <= 1)).all()
        assert all(set(d["scores"]) == {"alignment", "physics", "style"} for d in out.details)
    finally:
        think.close()
        pointwise.close()
    assert len(backends._ENGINES) == 1  # still held by the Flex judge


def test_several_groups_share_one_engine_batch(flex: RewardModel, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_chat_calls(flex, monkeypatch)
    groups = [media_group(4, seed=10), media_group(3, seed=11), media_group(3, frames=4, seed=12)]
    outs = flex.score_many(groups)  # type: ignore[attr-defined]
    assert calls == [6 + 3, 3]  # the image groups in one batch, the video group in its own
    assert [o.requests for o in outs] == [6, 3, 3] and [o.rewards.shape[0] for o in outs] == [4, 3, 3]


def test_groups_scored_from_two_threads_run_in_one_engine_call(
    flex: RewardModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the engine is busy, a second group's requests queue; the next holder sends both groups at once."""
    calls = count_chat_calls(flex, monkeypatch)
    engine = flex.backend.engine  # type: ignore[attr-defined]
    results: dict[int, object] = {}
    with engine.engine_lock:  # the engine is busy with someone else's batch
        threads = [
            threading.Thread(target=lambda k=k: results.__setitem__(k, flex.score(media_group(3, seed=20 + k))))
            for k in range(2)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(engine.pending) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(engine.pending) == 2
    for thread in threads:
        thread.join(timeout=120)
    assert calls == [6]  # 3 + 3 pairs of two groups, one llm.chat
    assert all(results[k].requests == 3 and results[k].unparsed == 0 for k in range(2))  # type: ignore[attr-defined]


def test_sampled_replies_follow_the_request_seeds_in_any_batch(flex: RewardModel) -> None:
    image = media_group(2, seed=20).media.numpy()
    sampling = backends.Generation(max_new_tokens=24, temperature=1.0)

    def ask(*seeds: int) -> list[str | None]:
        requests = [backends.JudgeRequest((image[0], image[1], "Which image is better?"), s) for s in seeds]
        return flex.backend.generate(requests, sampling)  # type: ignore[attr-defined]

    alone, crowded = ask(1, 2), ask(3, 1, 4, 2)
    assert crowded[1] == alone[0] and crowded[3] == alone[1]  # the same seed, the same reply, in another batch
    assert len({*alone, crowded[0], crowded[2]}) == 4  # other seeds, other replies


def test_a_sampling_judge_scores_a_group_the_same_alone_or_among_others(flex: RewardModel) -> None:
    sampling = build_reward(judge_spec("unifiedreward_flex", temperature=1.0))
    try:
        group = media_group(4, seed=21)
        alone = sampling.score(group)
        among = sampling.score_many([media_group(3, seed=22), group])[1]  # type: ignore[attr-defined]
    finally:
        sampling.close()
    assert torch.equal(alone.rewards, among.rewards) and alone.details == among.details

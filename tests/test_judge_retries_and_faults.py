"""A garbled reply, a failed request, a broken or dead backend cost a retry, then a counted tie; no error.

Faults are injected with a scripted backend (garbage on demand) and with real HTTP servers on loopback that
refuse, stall, fail or answer slowly.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from flexgrpo.config import ConfigError, RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.backends import Generation, HttpBackend, JudgeRequest, jpeg_decoded
from reward_workers.judges import FLEX, THINK, PairwiseJudge, PointwiseJudge, sample_frames
from reward_workers.registry import build_reward, check_reward_specs

GOOD_FLEX = json.dumps({"categories": [{"name": n, "cat_winner": "Image 1"} for n in "ABC"], "winner": "Image 1"})
GOOD_THINK = "<think>ok</think><answer>Image 1 is better</answer>"


def media_group(group_size: int = 4, frames: int | None = None) -> MediaGroup:
    shape = (group_size, 32, 32, 3) if frames is None else (group_size, frames, 32, 32, 3)
    media = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return MediaGroup(group_id="g0", prompt="a red cat", policy_version=3, media=media)


class ScriptedBackend:
    """Answers each call with `reply(request, call_index)`; records what it was asked."""

    retry_delay_s = 0.0

    def __init__(self, reply: Callable[[JudgeRequest, int], str | None]) -> None:
        self.reply = reply
        self.calls: list[tuple[int, Generation]] = []  # (requests in the call, generation)
        self.closed = False

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        self.calls.append((len(requests), generation))
        return [self.reply(r, len(self.calls) - 1) for r in requests]

    def close(self) -> None:
        self.closed = True


def spec(**overrides: object) -> RewardSpec:
    return RewardSpec(**({"name": "unifiedreward_flex", "model": "judge"} | overrides))  # type: ignore[arg-type]


def test_garbage_then_good_reply_costs_one_retry() -> None:
    backend = ScriptedBackend(lambda r, call: "not json at all" if call == 0 else GOOD_FLEX)
    out = PairwiseJudge(backend, spec(max_retries=2, temperature=0.0), FLEX).score(media_group(4))
    assert out.unparsed == 0 and out.requests == 12  # 6 pairs, each sent twice
    assert [n for n, _ in backend.calls] == [6, 6]
    assert [g.temperature for _, g in backend.calls] == [0.0, 0.7]  # a retry samples instead of repeating
    assert all(d["attempts"] == 2 for d in out.details if d["kind"] == "pair")
    expected = [1.0, 0.667, 0.333, 0.0]  # first shown always wins; official: rounded to 3 decimals as the authors do
    torch.testing.assert_close(out.rewards, torch.tensor(expected))


def test_requests_are_seeded_by_judge_group_and_index_and_a_retry_samples_anew() -> None:
    seeds: list[tuple[int, int | None]] = []  # (call, seed) of every request sent

    def reply(request: JudgeRequest, call: int) -> str:
        seeds.append((call, request.seed))
        return "not json at all" if call == 0 else GOOD_FLEX

    PairwiseJudge(ScriptedBackend(reply), spec(max_retries=1), FLEX).score(media_group(4))
    first = [seed for call, seed in seeds if call == 0]
    assert len(set(first)) == 6 and all(isinstance(s, int) for s in first)  # one seed per pair
    assert [seed for call, seed in seeds if call == 1] == [s + 1 for s in first]  # a retry samples anew

    def seeds_of(judge_spec: RewardSpec, group: MediaGroup) -> list[int | None]:
        return [r.seed for r in PairwiseJudge(ScriptedBackend(reply), judge_spec, FLEX).requests(group)[1]]

    group = media_group(4)
    assert seeds_of(spec(), group) == first  # judged again (a resume, a restarted worker): the same seeds
    assert not set(seeds_of(spec(), replace(group, group_id="g1"))) & set(first)  # another group
    assert not set(seeds_of(spec(name="unifiedreward_think"), group)) & set(first)  # another judge


def test_replies_that_never_parse_are_counted_ties() -> None:
    backend = ScriptedBackend(lambda r, call: '{"winner": "Image 3"')
    out = PairwiseJudge(backend, spec(max_retries=2), FLEX).score(media_group(4))
    assert out.unparsed == 6 and out.requests == 18 and len(backend.calls) == 3
    torch.testing.assert_close(out.rewards, torch.full((4,), 0.5))
    json.dumps(out.details)


def test_only_the_failed_requests_are_retried() -> None:
    flaky = {0, 3}  # pairs whose first reply is lost

    def reply(request: JudgeRequest, call: int) -> str | None:
        index = reply.seen  # type: ignore[attr-defined]
        reply.seen += 1  # type: ignore[attr-defined]
        return None if call == 0 and index in flaky else GOOD_THINK

    reply.seen = 0  # type: ignore[attr-defined]
    backend = ScriptedBackend(reply)
    out = PairwiseJudge(backend, spec(max_retries=1), THINK).score(media_group(4))
    assert [n for n, _ in backend.calls] == [6, 2] and out.unparsed == 0 and out.requests == 8


@pytest.mark.parametrize("fault", ["raises", "short", "not_a_list"])
def test_a_broken_backend_gives_ties_not_errors(fault: str) -> None:
    class Broken(ScriptedBackend):
        def generate(self, requests, generation):  # noqa: ANN001, ANN202
            self.calls.append((len(requests), generation))
            if fault == "raises":
                raise RuntimeError("engine died")
            return [GOOD_FLEX] if fault == "short" else None

    backend = Broken(lambda r, c: None)
    out = PairwiseJudge(backend, spec(max_retries=1), FLEX).score(media_group(3))
    assert out.unparsed == 3 and out.requests == 6 and len(backend.calls) == 2
    torch.testing.assert_close(out.rewards, torch.full((3,), 0.5))


def test_pointwise_partial_and_garbled_replies() -> None:
    replies = [
        "Alignment Score (1-5): 5\nCoherence Score (1-5): 5\nStyle Score (1-5): 5",
        "Alignment Score: 1",
        "??",
    ]
    order = iter(replies)
    backend = ScriptedBackend(lambda r, call: next(order))
    robust = spec(name="unifiedreward_2", max_retries=0, protocol="robust")
    out = PointwiseJudge(backend, robust).score(media_group(3))
    torch.testing.assert_close(out.rewards, torch.tensor([1.0, (0 + 0.5 + 0.5) / 3, 0.5]))
    assert out.unparsed == 1 and out.requests == 3
    assert [d["scores"] for d in out.details] == [
        {"alignment": 5, "coherence": 5, "style": 5},
        {"alignment": 1},
        {},
    ]


def test_request_layout_images_and_videos() -> None:
    flex = PairwiseJudge(ScriptedBackend(lambda r, c: GOOD_FLEX), spec(), FLEX)
    pairs, requests = flex.requests(media_group(3, frames=20))
    assert pairs == [(0, 1), (0, 2), (1, 2)]
    parts = requests[0].parts
    assert len(parts) == 17 and isinstance(parts[-1], str)  # the frames of both videos, then the text
    assert len(requests[0].images) == 16  # 8 evenly spaced frames per video
    video = media_group(3, frames=20).media
    frames = sample_frames(video, 8)
    np.testing.assert_array_equal(frames[1][0], video[1, 0].numpy())
    np.testing.assert_array_equal(frames[1][-1], video[1, 19].numpy())
    assert len(sample_frames(video[:, :5], 8)[0]) == 5  # a short video gives all its frames
    _, image_requests = flex.requests(media_group(3))
    assert [p if isinstance(p, str) else "img" for p in image_requests[2].parts[:2]] == ["img", "img"]
    np.testing.assert_array_equal(image_requests[2].images[0], media_group(3).media[1].numpy())


def test_structured_output_constraints_follow_the_spec() -> None:
    backend = ScriptedBackend(lambda r, c: GOOD_THINK)
    PairwiseJudge(backend, spec(structured_output=True, structured_text_chars=7), THINK).score(media_group(2))
    PairwiseJudge(backend, spec(structured_output=True, max_new_tokens=33), FLEX).score(media_group(2))
    PairwiseJudge(backend, spec(structured_output=False), FLEX).score(media_group(2))
    think, flex, free = (g for _, g in backend.calls[:1] + backend.calls[1:2] + backend.calls[-1:])
    assert think.regex is not None and "{0,7}" in think.regex and think.json_schema is None
    assert flex.json_schema is not None and flex.json_schema["properties"]["winner"] == {"enum": ["Image 1", "Image 2"]}
    assert flex.max_new_tokens == 33
    assert free.json_schema is None and free.regex is None


def test_spec_errors_name_what_to_change() -> None:
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.model is required"):
        check_reward_specs([RewardSpec(name="unifiedreward_flex")])
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.backend must be one of"):
        check_reward_specs([RewardSpec(name="unifiedreward_think", model="m", backend="sglang")])
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.url is required with backend http"):
        check_reward_specs([RewardSpec(name="unifiedreward_2", model="m", backend="http")])


# ---------------------------------------------------------------------------------------- real HTTP faults
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietOnHangUp(ThreadingHTTPServer):
    """A reply written after its client timed out and hung up (the fault these tests inject) is dropped without
    a traceback on stderr, where it would land in whatever test runs next in this process."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipeError, ConnectionResetError
            super().handle_error(request, client_address)


class FaultServer:
    """A loopback HTTP server whose chat endpoint answers per `mode`; counts requests in flight."""

    def __init__(self, mode: str, delay_s: float = 0.0) -> None:
        self.mode, self.delay_s = mode, delay_s
        self.in_flight = self.max_in_flight = self.requests = 0
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests += 1
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                    owner.bodies.append(body | {"auth": self.headers.get("Authorization")})
                time.sleep(owner.delay_s)
                with owner.lock:
                    owner.in_flight -= 1
                if owner.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    return
                reply = {"choices": [{"message": {"content": GOOD_THINK}}]} if owner.mode == "ok" else {"oops": 1}
                payload = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = _QuietOnHangUp(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_server(request: pytest.FixtureRequest) -> Iterator[FaultServer]:
    server = FaultServer(*request.param)
    yield server
    server.close()


@pytest.mark.parametrize("fault_server", [("ok", 0.2)], indirect=True)
def test_http_concurrency_is_capped_and_images_travel_as_jpeg(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_TEST_KEY", "sekrit")
    judge = build_reward(
        RewardSpec(
            name="unifiedreward_think",
            model="served-judge",
            backend="http",
            url=fault_server.url,
            api_key_env="JUDGE_TEST_KEY",
            max_concurrency=3,
            structured_output=True,
        )
    )
    try:
        group = media_group(4)
        out = judge.score(group)
    finally:
        judge.close()
    assert out.unparsed == 0 and fault_server.requests == 6 and fault_server.max_in_flight == 3
    body = fault_server.bodies[0]
    assert body["model"] == "served-judge" and body["auth"] == "Bearer sekrit"
    assert len({b["seed"] for b in fault_server.bodies}) == 6  # each request's seed travels with it
    assert "regex" in body["structured_outputs"]
    urls = [p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url"]
    assert len(urls) == 2 and urls[0].startswith("data:image/jpeg;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1]))))
    assert any(np.array_equal(decoded, np.asarray(jpeg_decoded(s.numpy()))) for s in group.media)  # JPEG q95


@pytest.mark.parametrize("fault_server", [("error", 0.0), ("bad_body", 0.0), ("ok", 2.0)], indirect=True)
def test_http_faults_cost_retries_then_ties(fault_server: FaultServer) -> None:
    backend = HttpBackend(url=fault_server.url, model="m", timeout_s=0.5, retry_delay_s=0.01)
    start = time.perf_counter()
    out = PairwiseJudge(backend, spec(max_retries=1), THINK).score(media_group(3))
    backend.close()
    assert out.unparsed == 3 and out.requests == 6 and fault_server.requests == 6
    torch.testing.assert_close(out.rewards, torch.full((3,), 0.5))
    assert time.perf_counter() - start < 10


def test_dead_server_gives_ties_through_the_registry() -> None:
    judge = build_reward(
        RewardSpec(
            name="unifiedreward_flex",
            model="m",
            backend="http",
            url=f"http://127.0.0.1:{free_port()}/v1",
            max_retries=2,
            timeout_s=2.0,
        )
    )
    judge.backend.retry_delay_s = 0.01  # type: ignore[attr-defined]
    out = judge.score(media_group(3))
    judge.close()
    assert out.unparsed == 3 and out.requests == 9
    torch.testing.assert_close(out.rewards, torch.full((3,), 0.5))

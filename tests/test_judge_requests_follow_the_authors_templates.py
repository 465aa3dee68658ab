"""The exact request a judge sends, as the authors send it: the first sample's images, the second's, then one
text part that is the template file verbatim with the prompt put in; images as JPEG quality 95; videos as 8
frames each at linspace(0, F - 1, 8) truncated to integers; max_tokens 4096; thinking off; no temperature."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.backends import HttpBackend, engine_conversations
from reward_workers.judges import FLEX, THINK, PairwiseJudge, PointwiseJudge

TEMPLATES = Path(__file__).resolve().parents[1] / "reward_workers" / "templates"
PROMPT = "a red cat on a blue car"


def template_text(name: str) -> str:
    """The template body of a file, the prompt put in (its first line names the source)."""
    header, body = (TEMPLATES / name).read_text(encoding="utf-8").split("\n", 1)
    assert header.startswith("#! source: CodeGoat24/")
    return body.replace("{prompt}", PROMPT)


def group(shape: tuple[int, ...]) -> MediaGroup:
    media = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return MediaGroup(group_id="g", prompt=PROMPT, policy_version=0, media=media)


def jpeg_q95(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class NoBackend:
    retry_delay_s = 0.0

    def close(self) -> None:
        pass


def http_body(judge: PairwiseJudge, request, video: bool) -> dict:  # noqa: ANN001
    backend = HttpBackend("http://127.0.0.1:9/v1", "UnifiedReward")
    try:
        return backend.payload(request, judge._generation(video))
    finally:
        backend.close()


def test_flex_image_pair_request_is_the_authors() -> None:
    images = group((2, 32, 32, 3))
    judge = PairwiseJudge(NoBackend(), RewardSpec(name="unifiedreward_flex", model="m"), FLEX)  # type: ignore[arg-type]
    pairs, requests = judge.requests(images)
    assert pairs == [(0, 1)]
    first, second, text = requests[0].parts
    np.testing.assert_array_equal(first, images.media[0].numpy())
    np.testing.assert_array_equal(second, images.media[1].numpy())
    assert text == template_text("flex_image.txt")
    assert text.startswith("## Identity\nYou are a top-tier AI Image Content Evaluation Expert.")
    assert f"**Prompt:** [{PROMPT}]\n\n**Content to be Evaluated:**\n[Image 1] \n[Image 2] \n" in text
    assert text.endswith('  "winner": "Image 1/2"\n}\n')

    body = http_body(judge, requests[0], video=False)
    content = body["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"] and content[2]["text"] == text
    for part, image in zip(content[:2], (first, second), strict=True):
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(url.split(",", 1)[1]) == jpeg_q95(image)
    assert body["max_tokens"] == 4096 and body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "temperature" not in body and "response_format" not in body  # the server's model defaults apply


def test_in_process_engine_sees_the_same_parts_and_jpeg_pixels_decoded_once_per_sample() -> None:
    images = group((3, 32, 32, 3))
    judge = PairwiseJudge(NoBackend(), RewardSpec(name="unifiedreward_flex", model="m"), FLEX)  # type: ignore[arg-type]
    pairs, requests = judge.requests(images)
    conversations = engine_conversations(requests)
    assert [[turn["role"] for turn in c] for c in conversations] == [["user"]] * 3
    contents = [c[0]["content"] for c in conversations]
    assert all([p["type"] for p in content] == ["image_pil", "image_pil", "text"] for content in contents)
    assert all(content[2]["text"] == template_text("flex_image.txt") for content in contents)
    shown: dict[int, list[Image.Image]] = {}
    for (i, j), content in zip(pairs, contents, strict=True):
        shown.setdefault(i, []).append(content[0]["image_pil"])
        shown.setdefault(j, []).append(content[1]["image_pil"])
    for sample, decoded in shown.items():
        assert all(d is decoded[0] for d in decoded)  # one decode per sample, shared by its pairs
        jpeg = np.asarray(Image.open(io.BytesIO(jpeg_q95(images.media[sample].numpy()))))
        np.testing.assert_array_equal(np.asarray(decoded[0]), jpeg)  # the pixels a server decodes


def test_flex_video_pair_request_is_the_authors() -> None:
    videos = group((2, 9, 32, 32, 3))
    judge = PairwiseJudge(NoBackend(), RewardSpec(name="unifiedreward_flex", model="m"), FLEX)  # type: ignore[arg-type]
    _, requests = judge.requests(videos)
    parts = requests[0].parts
    assert len(parts) == 17 and parts[16] == template_text("flex_video.txt")
    index = [0, 1, 2, 3, 4, 5, 6, 8]  # np.linspace(0, 8, 8).astype(int)
    for k, frame in enumerate(index):
        np.testing.assert_array_equal(parts[k], videos.media[0, frame].numpy())
        np.testing.assert_array_equal(parts[8 + k], videos.media[1, frame].numpy())
    content = http_body(judge, requests[0], video=True)["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url"] * 16 + ["text"]
    assert "[Video 1] \n[Video 2] \n" in parts[16] and "Narrative, Aesthetics & Cinematography" in parts[16]


@pytest.mark.parametrize(("video", "name"), [(False, "think_image.txt"), (True, "think_video.txt")])
def test_think_request_is_the_authors(video: bool, name: str) -> None:
    media = group((2, 4, 32, 32, 3) if video else (2, 32, 32, 3))
    judge = PairwiseJudge(NoBackend(), RewardSpec(name="unifiedreward_think", model="m"), THINK)  # type: ignore[arg-type]
    parts = judge.requests(media)[1][0].parts
    assert parts[-1] == template_text(name) and f"「{PROMPT}」" in parts[-1]
    assert all(isinstance(p, np.ndarray) for p in parts[:-1])


class RecordingBackend(NoBackend):
    def __init__(self) -> None:
        self.calls: list[tuple[list, object]] = []

    def generate(self, requests: list, generation: object) -> list[str]:
        self.calls.append((requests, generation))
        return ["Alignment Score (1-5): 2.69\nPhysics Score (1-5): 3.1\nStyle Score (1-5): 4"] * len(requests)


def test_pointwise_request_is_the_authors_and_thinking_is_a_switch() -> None:
    backend = RecordingBackend()
    videos = group((2, 9, 32, 32, 3))
    spec = RewardSpec(name="unifiedreward_2", model="m", thinking=True)
    out = PointwiseJudge(backend, spec).score(videos)  # type: ignore[arg-type]
    ((requests, generation),) = backend.calls
    assert [len(r.parts) for r in requests] == [9, 9] and requests[1].parts[-1] == template_text("pointwise_video.txt")
    np.testing.assert_array_equal(requests[1].parts[7], videos.media[1, 8].numpy())
    assert generation.thinking is True and generation.max_new_tokens == 4096 and generation.temperature is None
    expected = ((2.69 - 1) / 4 + (3.1 - 1) / 4 + (4 - 1) / 4) / 3  # decimal scores, as 2.0 writes them
    torch.testing.assert_close(out.rewards, torch.full((2,), expected))

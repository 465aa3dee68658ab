"""The tiny Qwen2.5-VL judge builds offline and deterministically, and judges through the transformers
backend: its random replies do not parse, so they cost a retry and end as counted ties."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.backends import Generation, JudgeRequest, TransformersBackend
from reward_workers.registry import build_reward
from reward_workers.tiny_judge import SPECIAL_TOKENS, TINY_JUDGE, build_tiny_judge, tiny_judge_path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_deterministic_and_untied(tmp_path: Path) -> None:
    build_tiny_judge(tmp_path / "a")
    build_tiny_judge(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name), name
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert config["text_config"]["hidden_size"] == 64 and config["text_config"]["num_hidden_layers"] == 2
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [4, 6, 6]


def test_tokenizer_and_chat_template() -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_judge_path())
    tokenizer = processor.tokenizer
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(token)) == [tokenizer.convert_tokens_to_ids(token)]
    content = [{"type": "text", "text": "which?"}, {"type": "image"}, {"type": "image_url"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == f"<|im_start|>user\nwhich?{vision}{vision}<|im_end|>\n<|im_start|>assistant\n"


def test_transformers_backend_replies_and_garbage_becomes_counted_ties() -> None:
    backend = TransformersBackend(str(tiny_judge_path()))
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    replies = backend.generate(
        [JudgeRequest(("Which is better?", image, image)), JudgeRequest(("Rate it", image))],
        Generation(max_new_tokens=8),
    )
    assert all(isinstance(r, str) for r in replies)
    backend.close()

    spec = RewardSpec(
        name="unifiedreward_think", model=TINY_JUDGE, backend="transformers", max_new_tokens=12, max_retries=1
    )
    judge = build_reward(spec)
    media = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = judge.score(MediaGroup(group_id="g", prompt="a red cat", policy_version=0, media=media))
    judge.close()
    assert out.unparsed == 3 and out.requests == 6
    torch.testing.assert_close(out.rewards, torch.full((3,), 0.5))


@pytest.mark.parametrize("name", ["unifiedreward_flex", "unifiedreward_2"])
def test_other_judges_on_transformers(name: str) -> None:
    spec = RewardSpec(name=name, model=TINY_JUDGE, backend="transformers", max_new_tokens=4, max_retries=0)
    judge = build_reward(spec)
    media = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = judge.score(MediaGroup(group_id="v", prompt="a red cat", policy_version=0, media=media))
    judge.close()
    assert out.rewards.shape == (2,) and out.unparsed == out.requests

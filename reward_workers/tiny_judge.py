"""A tiny random Qwen2.5-VL judge, built offline, cached and deterministic.

It is a real Qwen2.5-VL checkpoint folder (config, safetensors weights, byte-level BPE tokenizer with the Qwen
special tokens and a chat template, image/video processor configs) that vLLM and transformers load, so the
judges and their backends are tested end to end without a hub. Its replies are random text: tests that need
parseable replies constrain them with structured outputs. A plain `vllm.LLM` on CPU needs
`reward_workers.backends.prepare_vllm_environment()` first (vLLM inspects the model in a child process).
"""

from __future__ import annotations

from pathlib import Path

import torch

from flexgrpo.model_cache import cached_build

TINY_JUDGE = "tiny-qwen2.5-vl-judge"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
MAX_IMAGE_PIXELS = 56 * 56  # every image is resized to at most 2x2 merged patches: 4 tokens
_MARKER = ".built-v1"  # bump when the build changes, so cached folders are rebuilt

# Renders the Qwen chat layout. Content is a string or a list of parts; an image part (however a client
# names it) becomes one vision block, which the processor expands to the image's patch tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url', 'image_pil') -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] in ('video', 'video_url') -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>{{ 'assistant\\n' }}{%- endif -%}"
)


def tiny_judge_path() -> Path:
    """The cached folder of the tiny judge, built on first use (~2 s)."""
    return cached_build(TINY_JUDGE, build_tiny_judge, _MARKER)


def resolve_judge_model(name_or_path: str) -> str:
    """Map the tiny judge's name to its cached folder; leave other paths and hub ids alone."""
    return str(tiny_judge_path()) if name_or_path == TINY_JUDGE else name_or_path


def _training_text() -> list[str]:
    """A fixed corpus for the tokenizer: judge vocabulary, digits and JSON punctuation."""
    words = (
        "image video prompt the a of and is better worse winner reason score category semantic alignment "
        "accuracy quality realism aesthetics artistry dynamic narrative cinematography coherence style "
        "physics think answer name dims cat_reason cat_winner reason_1 reason_2 score_1 score_2 "
        "cat dog red blue tree house sky sea car photo"
    ).split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines += ['{"winner": "Image 1", "score_1": 7, "score_2": 3}', "Alignment Score (1-5): 4", "0123456789"]
    return lines * 4


def build_tokenizer():
    """A byte-level BPE tokenizer with the Qwen special tokens and chat template (PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_training_text(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_tiny_judge(path: Path) -> None:
    """Write the tiny Qwen2.5-VL judge (hidden 64, 2 layers, mrope [4, 6, 6], untied embeddings) to `path`."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,  # head dim 32: the mrope sections cover its 16 frequencies
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,  # vLLM reloads keep a stale lm_head when tied
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    size = {"shortest_edge": 28 * 28, "longest_edge": MAX_IMAGE_PIXELS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / _MARKER).touch()

"""The judge engine's context (vLLM max_model_len) holds the largest request a real recipe sends, and no more
than that needs: left to vLLM it is the model's own (Qwen3-VL: 262,144 tokens), whose KV cache (36 GiB in bf16
for the 8B judge) the engine must hold before it starts, so it failed to start with a 1 GiB CPU cache and
would on any GPU with less than ~55 GiB free."""

from __future__ import annotations

from benchmarks.real_shape_table import request_tokens
from flexgrpo.config import load_config
from reward_workers.backends import JUDGE_MAX_MODEL_LEN, judge_max_model_len
from reward_workers.real_shape_judges import QWEN3_VL_8B_TEXT_CONFIG, real_shape_judge_path
from reward_workers.tiny_judge import tiny_judge_path


def test_the_engine_context_is_capped_below_the_models_own():
    assert judge_max_model_len(str(real_shape_judge_path("real-shape-qwen3-vl-8b-judge"))) == JUDGE_MAX_MODEL_LEN
    assert JUDGE_MAX_MODEL_LEN < QWEN3_VL_8B_TEXT_CONFIG["max_position_embeddings"]
    assert judge_max_model_len(str(tiny_judge_path())) == 4096  # a model's shorter context is kept


def test_the_largest_flex_request_of_the_recipes_and_its_reply_fit():
    cfg = load_config("configs/wan21_t2v_flex.yaml", [])  # 2 videos x 8 frames of 480x832: the largest request
    text, images = request_tokens(cfg)
    assert images == 16 * (480 // 32) * (832 // 32)  # Qwen3-VL: one token per 32x32 pixels
    assert text + images + cfg.rewards[0].max_new_tokens <= JUDGE_MAX_MODEL_LEN

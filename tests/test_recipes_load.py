"""The real recipes (SD3.5-M, FLUX.1-dev, Wan 2.1 with UnifiedReward-Flex) pass config validation, name a
known policy family and reward, and fit one 8-GPU node; no weights are loaded. The tiny Flex recipe names the
tiny judge on vLLM and evaluates."""

from pathlib import Path

import pytest

from actors.policies import check_family
from flexgrpo.config import load_config
from reward_workers.registry import check_reward_specs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("recipe", "family", "model", "steps", "eval_steps", "noise", "group_size"),
    [
        ("sd35_medium_flex.yaml", "sd3", "stabilityai/stable-diffusion-3.5-medium", 10, 40, 0.7, 9),
        ("flux_dev_flex.yaml", "flux", "black-forest-labs/FLUX.1-dev", 6, 28, 0.9, 9),
        ("wan21_t2v_flex.yaml", "wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 20, 50, 0.7, 6),
    ],
)
def test_recipe_loads_and_fits_one_node(recipe, family, model, steps, eval_steps, noise, group_size):
    cfg = load_config(CONFIGS / recipe)
    check_family(cfg.policy.family)
    check_reward_specs(cfg.rewards)
    assert (cfg.policy.family, cfg.policy.model, cfg.policy.dtype) == (family, model, "bf16")
    s = cfg.sampler
    assert (s.num_steps, s.eval_num_steps, s.noise_level) == (steps, eval_steps, noise)
    assert cfg.grpo.group_size == group_size
    assert [(r.name, r.model) for r in cfg.rewards] == [
        ("unifiedreward_flex", "CodeGoat24/UnifiedReward-Flex-qwen3vl-8b")
    ]
    assert (cfg.policy.lora.rank, cfg.policy.lora.alpha, cfg.learner.lr) == (32, 64, 3e-4)
    pools = [cfg.cluster.rollout, cfg.cluster.reward, cfg.cluster.learner]
    assert sum(p.num_workers * p.gpus_per_worker for p in pools) == 8
    assert cfg.grpo.groups_per_step * group_size % cfg.cluster.learner.num_workers == 0


def test_sd35_recipe_uses_flow_grpo_settings():
    cfg = load_config(CONFIGS / "sd35_medium_flex.yaml")
    assert (cfg.policy.height, cfg.sampler.guidance_scale) == (512, 4.5)
    assert (cfg.grpo.clip_range, cfg.grpo.kl_beta) == (1e-4, 0.04)


def test_tiny_flex_recipe_judges_with_the_tiny_flex_judge_on_vllm_and_evaluates():
    from actors.tiny_models import TINY_MODELS
    from orchestration.roles import preflight
    from reward_workers.tiny_judge import TINY_JUDGE

    cfg = load_config(CONFIGS / "tiny_flex.yaml")
    preflight(cfg)  # names, model references and prompt files, as a job checks them
    assert cfg.policy.model in TINY_MODELS
    assert [(r.name, r.model, r.backend) for r in cfg.rewards] == [("unifiedreward_flex", TINY_JUDGE, "vllm")]
    assert cfg.rewards[0].structured_output  # the random judge's replies parse only under the schema
    assert cfg.eval.before_training and 0 < cfg.eval.every < cfg.run.num_steps

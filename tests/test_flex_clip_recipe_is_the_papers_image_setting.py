"""The Flex + CLIP recipe loads and is the UnifiedReward-Flex paper's image setting: Flex 0.7 + CLIP 0.3 mixed
at the advantage level (reward_combine gdpo), the authors' judge protocol, G = 9 on SD3.5-M."""

from pathlib import Path

from actors.policies import check_family
from flexgrpo.config import load_config
from reward_workers.registry import check_reward_specs

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "sd35_medium_flex_clip.yaml"


def test_flex_clip_recipe_mixes_advantages_like_the_paper() -> None:
    cfg = load_config(RECIPE)
    check_family(cfg.policy.family)
    check_reward_specs(cfg.rewards)
    assert cfg.grpo.reward_combine == "gdpo" and cfg.grpo.group_size == 9
    assert [(r.name, r.weight) for r in cfg.rewards] == [("unifiedreward_flex", 0.7), ("clip_score", 0.3)]
    flex = cfg.rewards[0]
    assert (flex.protocol, flex.max_new_tokens) == ("official", 4096)
    assert not flex.structured_output and not flex.thinking
    pools = [cfg.cluster.rollout, cfg.cluster.reward, cfg.cluster.learner]
    assert sum(p.num_workers * p.gpus_per_worker for p in pools) == 8

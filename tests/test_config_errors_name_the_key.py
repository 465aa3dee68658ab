"""A recipe or override that cannot run stops at load with an error that names the key and the fix."""

from pathlib import Path

import pytest

from flexgrpo.config import ConfigError, load_config
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grpo.group_sise=8", r"unknown config key 'grpo.group_sise'"),
        ("polcy.family=sd3", r"unknown config key 'polcy"),
        ("learner.lr=fast", r"bad value for config key 'learner.lr'"),
        ("grpo.group_size=1", r"grpo.group_size must be >= 2"),
        ("learner.lr=-0.001", r"learner.lr must be > 0, got -0.001"),
        ("sampler.kind=sdee", r"sampler.kind must be one of \['cps', 'dance', 'ode', 'sde'\], got 'sdee'"),
        ("sampler.kind=ode", r"cannot train"),
        ("cluster.rollout.num_workers=5", r"the pools need 7 GPUs but cluster.num_gpus is 3"),
        ("sampler.timestep_fraction=1.5", r"sampler.timestep_fraction must be in \(0, 1\]"),
        ("policy.height=60", r"multiples of 16"),
        ("policy.transformer=/no/such/folder", r"policy.transformer '/no/such/folder' holds no config.json"),
        ("learner.zero_stage=4", r"learner.zero_stage must be one of"),
        ("policy.dtype=fp8", r"policy.dtype must be one of"),
        ("grpo.groups_per_step=3 cluster.learner.num_workers=2 cluster.num_gpus=4", r"multiple of cluster.learner"),
        ("grpo.kl_beta=0.04 policy.lora.enabled=false learner.reference=none", r"kl_beta > 0 needs a reference"),
        ("learner.reference=cpu", r"learner.reference offloads to CPU through ZeRO-3"),
        ("learner.offload=true", r"learner.offload offloads to CPU through ZeRO-3"),
        ("learner.sync_snapshot=disk", r"learner.sync_snapshot must be one of \['cpu', 'device', 'none'\]"),
        ("learner.ema_decay=1.0", r"learner.ema_decay must be in \[0, 1\)"),
        ("learner.sync_bucket_mb=0", r"learner.sync_bucket_mb must be > 0"),
        ("rewards.0.max_retries=256", r"rewards\[0\].max_retries must be in \[0, 255\]"),
        ("rewards.x.weight=2", r"override 'rewards.x.weight=2': no config key 'rewards.x.weight'"),
        ("sampler.steps=4", r"override 'sampler.steps=4': unknown config key 'sampler.steps'"),
    ],
)
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(*override.split())


def test_unknown_key_in_a_recipe_file_names_key_and_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("run:\n  num_step: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'run.num_step'.*bad.yaml"):
        load_config(recipe)


def test_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe '.*nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_reward_and_family_are_rejected_listing_the_known_ones():
    from orchestration.roles import preflight

    with pytest.raises(ConfigError, match=r"rewards\[0\].name must be one of \[.*'jpeg_compressibility'.*got 'jpg'"):
        preflight(tiny_config("rewards=[{name: jpg}]"))
    with pytest.raises(ConfigError, match=r"policy.family must be one of \[.*'sd3'.*got 'sd4'"):
        preflight(tiny_config("policy.family=sd4"))


def test_missing_model_paths_are_named_before_anything_starts(tmp_path):
    from orchestration.roles import preflight

    with pytest.raises(ConfigError, match=r"policy.model '/no/such/pipeline' is not a folder that exists"):
        preflight(tiny_config("policy.model=/no/such/pipeline"))
    bad_judge = "rewards=[{name: unifiedreward_flex, model: ./judges/missing, backend: vllm}]"
    with pytest.raises(ConfigError, match=r"rewards\[0\].model './judges/missing' is not a folder"):
        preflight(tiny_config(bad_judge))
    preflight(tiny_config(f"policy.model={tmp_path}"))  # an existing folder passes (loading it is the role's job)
    preflight(tiny_config("policy.model=stabilityai/stable-diffusion-3.5-medium"))  # a hub id passes


def test_real_recipes_stop_before_starting_without_their_prompt_files():
    from orchestration.roles import preflight

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "sd35_medium_flex.yaml")
    with pytest.raises(ConfigError, match=r"prompts.file 'prompts.txt' does not exist"):
        preflight(cfg)


def test_prompt_file_errors_name_the_file(tmp_path):
    from flexgrpo.prompts import load_prompts

    missing = tiny_config(f"prompts.file={tmp_path / 'none.txt'}")
    with pytest.raises(ConfigError, match=r"prompts.file '.*none.txt' does not exist"):
        load_prompts(missing.prompts)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"has no prompts"):
        load_prompts(tiny_config(f"prompts.file={empty}").prompts)
    good = tmp_path / "p.txt"
    good.write_text("a cat\n\n a dog \n")
    assert load_prompts(tiny_config(f"prompts.file={good}").prompts) == ["a cat", "a dog"]


def test_the_default_recipe_loads_and_overrides_apply():
    cfg = tiny_config(
        "grpo.group_size=4", "rewards=[{name: jpeg_incompressibility, weight: 1.0}]", "rewards.0.weight=2"
    )
    assert cfg.policy.family == "sd3" and cfg.grpo.group_size == 4
    assert cfg.rewards[0].name == "jpeg_incompressibility" and cfg.rewards[0].weight == 2.0

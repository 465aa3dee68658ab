"""A full fine-tune (no LoRA) ends by writing its transformer as diffusers saves it (RUN_DIR/transformer), which
`policy.transformer` loads in place of the model's own, and `flexgrpo eval RUN_DIR` compares it with the start, as
a user runs it (a shell with only PATH and HOME); `--candidate TRANSFORMER_FOLDER` compares the same two policies
with the same settings; a full fine-tune's checkpoint (DeepSpeed state only) is refused with one line."""

import json
from pathlib import Path

import pytest
import torch

from tests.user_shell import FLEXGRPO, run_in_clean_shell

SHORT = ["sampler.eval_num_steps=4", "eval.samples_per_prompt=1"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fullft")
    done = run_in_clean_shell(
        [
            FLEXGRPO,
            "train",
            f"run.output_dir={root}",
            "run.name=full",
            "policy.lora.enabled=false",
            "run.num_steps=1",
            "grpo.groups_per_step=1",
            "grpo.group_size=4",
            "sampler.num_steps=4",
            "learner.lr=0.01",
            "eval.every=0",
        ]
    )
    assert f"transformer (diffusers format): {root / 'full' / 'transformer'}" in done.stdout
    return root / "full"


def test_policy_transformer_loads_the_exported_weights_in_place_of_the_models(run):
    from diffusers import SD3Transformer2DModel

    from actors.policies import build_policy
    from actors.tiny_models import resolve_model
    from flexgrpo.config import load_config

    exported = dict(SD3Transformer2DModel.from_pretrained(run / "transformer").named_parameters())
    base = Path(resolve_model("tiny-sd3")) / "transformer"
    start = dict(SD3Transformer2DModel.from_pretrained(base).named_parameters())
    assert any(not torch.equal(exported[n], start[n]) for n in start)  # one step changed the weights
    cfg = load_config(None, ["policy.lora.enabled=false", f"policy.transformer={run / 'transformer'}"])
    built = dict(build_policy(cfg.policy).transformer.named_parameters())
    assert built.keys() == exported.keys()
    assert all(torch.equal(built[n], exported[n]) for n in exported)


def test_eval_of_the_run_and_of_its_transformer_folder_agree(run, tmp_path):
    from orchestration.eval_run import policies_comparison, run_comparison
    from orchestration.evaluation import eval_settings

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\ntwo cats\n")
    rewards = tmp_path / "rewards.yaml"
    rewards.write_text("- name: jpeg_compressibility_pairwise\n- name: jpeg_compressibility\n")
    common = ["--prompts", str(prompts), "--rewards", str(rewards), "--out"]
    run_in_clean_shell([FLEXGRPO, "eval", str(run), *SHORT, *common, str(tmp_path / "run_form")])
    by_run = json.loads((tmp_path / "run_form" / "eval.json").read_text())
    assert by_run["settings"]["candidate"]["transformer"] == str(run / "transformer")
    assert by_run["settings"]["baseline"]["transformer"] is None
    point = by_run["rewards"]["jpeg_compressibility"]
    assert point["candidate_mean"] != point["baseline_mean"]  # the trained transformer was sampled

    # --candidate TRANSFORMER_FOLDER (with the tiny recipe's settings): the same sides and sampling settings, so
    # the same samples and figures
    specs = [{"name": "jpeg_compressibility_pairwise"}, {"name": "jpeg_compressibility"}]
    cfg, baseline, candidate = run_comparison(run, SHORT, specs)
    recipe, *sides = policies_comparison(("tiny-sd3", None), (str(run / "transformer"), None), None, SHORT, specs)
    assert sides == [baseline, candidate] and candidate.policy.transformer == str(run / "transformer")
    assert eval_settings(recipe) == eval_settings(cfg)
    assert recipe.eval.samples_per_prompt == cfg.eval.samples_per_prompt and recipe.eval.rewards == cfg.eval.rewards

    checkpoint = next((run / "checkpoints").glob("step_*"))
    refused = ["--baseline", "tiny-sd3", "--candidate", str(checkpoint)]
    done = run_in_clean_shell([FLEXGRPO, "eval", *refused, *common, str(tmp_path / "refused")], code=2)
    assert "holds DeepSpeed state only" in done.stderr and done.stderr.count("\n") == 1

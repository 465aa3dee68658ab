"""Each real recipe runs through `flexgrpo train`, in a clean environment, with its policy and judge swapped for
builds at the real architectures' widths (actors/real_shapes.py, reward_workers/real_shape_judges.py) and
nothing else of the recipe changed except what `REDUCED` lists: one rollout group sampled, judged by the
Qwen3-VL-8B-shaped judge through the in-process vLLM engine, one learner step, one weight publish, one
evaluation, and the exported LoRA loaded back into a plain diffusers pipeline of the real class.

What is reduced, and why (2 shared CPU cores; a real-width block costs ~1 s per sample and step):
- the pools: one worker each on 3 logical GPUs (the recipes ask for 4 + 2 + 2 on 8 GPUs);
- the policy's dtype: fp32 instead of bf16 (this AVX2 CPU has no bf16 matmul: the recipe's bf16 sampled 5x
  slower; the judge engine picks fp32 on such CPUs for the same reason, `engine_dtype`);
- resolution and frames: 128 px (Wan: 64x112, 5 frames) instead of 512 px (Wan 480x832, 33 frames): the real
  Wan VAE decodes 5 frames of 128x224 in 40 s here;
- group size 3 (3 pairs judged) instead of 9 (36 pairs; Wan 6, 15 pairs);
- sampler steps 2 (train) and 2 (eval) instead of 10/40, 6/28, 20/50;
- judge replies 32 new tokens instead of 4096 (a random judge writes to the limit);
- evaluation: 1 prompt, 1 sample.
Group size, steps and reply length only scale the work; resolution and frames change the token counts, which
`benchmarks/real_shape_table.py` gives at the recipes' real settings.

With FLEXGRPO_REAL_SHAPES_FULL_DEPTH=1 (scripts/gpu_check.sh, on a machine with 3 or more GPUs) the models are
built at full depth in bf16 and only the run's length is cut (`FULL_DEPTH_REDUCED`): the recipes' resolution,
frames, group size, sampler steps, dtype and reply length, one GPU per role.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from actors.real_shapes import real_shape_path
from flexgrpo.config import LoraConfig
from reward_workers.real_shape_judges import real_shape_judge_path
from tests.user_shell import CLEAN_ENV, FLEXGRPO

pytestmark = [pytest.mark.slow, pytest.mark.real_shapes]

REPO = Path(__file__).resolve().parents[1]
JUDGE = "real-shape-qwen3-vl-8b-judge"
REDUCED = [
    "cluster.num_gpus=3",
    "cluster.rollout.num_workers=1",
    "cluster.reward.num_workers=1",
    "cluster.learner.num_workers=1",
    "policy.dtype=fp32",
    "run.num_steps=1",
    "grpo.groups_per_step=1",
    "grpo.group_size=3",
    "sampler.num_steps=2",
    "sampler.eval_num_steps=2",
    "rewards.0.max_new_tokens=32",
    "eval.every=1",
    "eval.num_prompts=2",  # the fewest an interval over prompts takes
    "eval.samples_per_prompt=1",
]
FULL_DEPTH = os.environ.get("FLEXGRPO_REAL_SHAPES_FULL_DEPTH") == "1"
FULL_DEPTH_REDUCED = [
    "cluster.num_gpus=3",
    "cluster.rollout.num_workers=1",
    "cluster.reward.num_workers=1",
    "cluster.learner.num_workers=1",
    "run.num_steps=1",
    "grpo.groups_per_step=1",
    "eval.every=1",
    "eval.num_prompts=2",  # the fewest an interval over prompts takes
    "eval.samples_per_prompt=1",
]
RECIPES = {  # recipe -> (policy build, pipeline class, its own reductions)
    "sd35_medium_flex": (
        "real-shape-sd3.5-medium",
        "StableDiffusion3Pipeline",
        ["policy.height=128", "policy.width=128"],
    ),
    "flux_dev_flex": ("real-shape-flux.1-dev", "FluxPipeline", ["policy.height=128", "policy.width=128"]),
    "wan21_t2v_flex": (
        "real-shape-wan2.1-t2v-1.3b",
        "WanPipeline",
        ["policy.height=64", "policy.width=112", "policy.num_frames=5"],
    ),
    "sd35_medium_flex_clip": (
        "real-shape-sd3.5-medium",
        "StableDiffusion3Pipeline",
        ["policy.height=128", "policy.width=128"],
    ),
}


SCORERS = {"sd35_medium_flex_clip": {"rewards.1.model": "real-shape-clip-vit-h-14"}}  # besides the judge


def run_recipe(recipe: str, tmp_path: Path) -> Path:
    """`flexgrpo train configs/<recipe>.yaml` with the swaps and reductions, in an environment of PATH and HOME."""
    policy, _, own = RECIPES[recipe]
    reduced = FULL_DEPTH_REDUCED if FULL_DEPTH else [*REDUCED, *own]
    (tmp_path / "prompts.txt").write_text("a photo of a red cat\na blue car on the sea\n")
    args = [
        FLEXGRPO,
        "train",
        str(REPO / "configs" / f"{recipe}.yaml"),
        f"run.output_dir={tmp_path}",
        f"policy.model={real_shape_path(policy, FULL_DEPTH)}",
        f"rewards.0.model={real_shape_judge_path(JUDGE, FULL_DEPTH)}",
        f"prompts.file={tmp_path / 'prompts.txt'}",
        f"eval.prompts_file={tmp_path / 'prompts.txt'}",
        *(f"{key}={real_shape_judge_path(name, FULL_DEPTH)}" for key, name in SCORERS.get(recipe, {}).items()),
        *reduced,
    ]
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        code = subprocess.run(
            args, stdout=out, stderr=subprocess.STDOUT, env=CLEAN_ENV, cwd=tmp_path, timeout=900
        ).returncode
    assert code == 0, log.read_text(errors="replace")[-6000:]
    return next(p for p in tmp_path.iterdir() if (p / "metrics.jsonl").is_file())


def check_run(run_dir: Path, recipe: str) -> None:
    """One learner step judged on every pair, one evaluation, and a LoRA that loads into the real pipeline class."""
    import diffusers

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert len(steps) == 1
    group_size = 3 if not FULL_DEPTH else {"wan21_t2v_flex": 6}.get(recipe, 9)
    assert steps[0]["reward/requests"] >= group_size * (group_size - 1) // 2  # every pair of the group judged
    assert any(k.startswith("eval/") for r in rows for k in r), rows
    policy, pipeline_cls, _ = RECIPES[recipe]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if FULL_DEPTH else torch.float32
    pipe = getattr(diffusers, pipeline_cls).from_pretrained(real_shape_path(policy, FULL_DEPTH), dtype=dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    targets = LoraConfig().target_modules  # the recipes keep the default targets
    expected = {n for n, _ in pipe.transformer.named_modules() if any(n.endswith("." + t) for t in targets)}
    pipe.load_lora_weights(str(run_dir / "lora"))
    adapted = {k.split(".lora_A")[0] for k in pipe.transformer.state_dict() if ".lora_A" in k}
    assert adapted and adapted == expected, f"LoRA on {len(adapted)} modules, targets match {len(expected)}"
    frames = {"num_frames": 5} if pipeline_cls == "WanPipeline" else {}
    out = pipe("a photo of a red cat", num_inference_steps=1, height=64, width=64, output_type="latent", **frames)
    assert torch.isfinite(out[0] if isinstance(out, tuple) else next(iter(out.values()))).all()


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_runs_at_real_shapes(recipe, tmp_path):
    check_run(run_recipe(recipe, tmp_path), recipe)

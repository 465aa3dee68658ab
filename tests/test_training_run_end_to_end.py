"""The whole loop through real Ray actors on placement groups, a DeepSpeed learner, the gloo weight-sync group
and a real embedded Redis: outputs on disk, the run registry, evaluation on schedule (the bit-exact weight
broadcast: test_two_learner_ranks_and_two_samplers_replicas_restores_and_a_dead_rank.py)."""

import json

import pytest
import torch
from PIL import Image

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane
from orchestration.driver import train
from orchestration.reporting import read_metrics
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


E2E = (
    "run.num_steps=3",
    "grpo.groups_per_step=2",
    "grpo.group_size=4",
    "learner.lr=0.05",  # each step moves the weights visibly
    "learner.sync_snapshot=none",  # published through a ring of two buckets, the LoRA in several
    "learner.sync_bucket_mb=0.01",
    "eval.every=1",
    "eval.before_training=true",
    "eval.num_prompts=2",
    "eval.samples_per_prompt=2",
)


def _train(tmp_path, name: str, *overrides: str):
    return train(tiny_config(f"run.output_dir={tmp_path}", f"run.name={name}", *E2E, *overrides))


@pytest.fixture(scope="module")
def e2e(ray_local, tmp_path_factory):
    """One run of 3 steps with an evaluation before training and after each step: (its summary, its folder)."""
    root = tmp_path_factory.mktemp("e2e")
    return _train(root, "e2e"), root / "e2e"


def test_run_writes_metrics_samples_lora_and_registry(e2e):
    summary, run_dir = e2e
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(isinstance(r["reward_mean"], float) and r["reward_mean"] < 0 for r in rows)  # minus JPEG kB
    assert all(abs(r["loss/ratio_mean"] - 1) < 1e-5 for r in rows)  # synchronous: on-policy
    assert summary.reward_means == [r["reward_mean"] for r in rows]
    assert (run_dir / "samples" / "step_00000.png").is_file() and (run_dir / "samples" / "step_00002.png").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    curve = Image.open(run_dir / "samples" / "reward_curve.png")
    assert curve.size == (640, 2 * 360)  # the training reward; below it the evaluation against the start
    assert len(set(curve.convert("RGB").getdata())) > 2  # axes, text and lines
    status = json.loads((run_dir / "status.json").read_text())  # what `flexgrpo status` shows once Redis is gone
    assert status["status"] == "finished" and status["pools"]["rollout/groups_per_s"] > 0
    assert {"rollout/idle_frac", "reward/queue_depth", "learner/idle_frac"} <= status["pools"].keys()

    # The embedded Redis saved its data in the run directory: a new server on that folder holds the run.
    with EmbeddedRedis(run_dir / "redis") as url:
        control = ControlPlane(url, "e2e")
        info = control.run_info()
        assert info["step"] == "3" and info["status"] == "finished" and info["policy_version"] == "3"
        assert json.loads(info["config"])["grpo"]["group_size"] == 4
        ledger = control.ledger_states()
        assert len(ledger) == 6 and {g["state"] for g in ledger.values()} == {"trained"}
        assert sorted(g["step"] for g in ledger.values()) == [0, 0, 1, 1, 2, 2]
        assert [m["step"] for m in control.read_metrics()] == [0, 1, 2]
        beats = control.heartbeats()
        assert {"rollout-0", "reward-0", "learner-0"} <= beats.keys()  # written by the workers themselves

    # The saved LoRA loads into a plain diffusers pipeline and changes its transformer.
    from diffusers import StableDiffusion3Pipeline

    from actors.tiny_models import resolve_model

    pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model("tiny-sd3"), text_encoder_3=None, tokenizer_3=None)
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(1, 5, 64, generator=generator),
        "pooled_projections": torch.randn(1, 64, generator=generator),
        "timestep": torch.tensor([500.0]),
    }
    with torch.no_grad():
        before = pipe.transformer(**inputs).sample
        pipe.load_lora_weights(str(summary.weights_dir))
        after = pipe.transformer(**inputs).sample
    assert not torch.allclose(before, after), "the trained LoRA should change the transformer's output"


def test_evaluation_runs_on_schedule_with_fixed_seeds_and_a_baseline(e2e, tmp_path):
    rows = read_metrics(e2e[1])
    mean = "jpeg_compressibility/mean"  # the training reward scores the evaluation (no eval.rewards)
    assert all(f"eval/{mean}" in r and r["timing/eval"] > 0 and r["eval/ema"] == 0 for r in rows)
    evals = [rows[0][f"eval_before/{mean}"], *(r[f"eval/{mean}"] for r in rows)]
    assert len(set(evals)) == 4, evals  # versions 0, 1, 2, 3: same seeds, new weights
    assert rows[0]["eval_before/jpeg_compressibility/delta_vs_start"] == 0.0  # the start against itself
    assert rows[2]["eval/jpeg_compressibility/delta_vs_start"] == pytest.approx(evals[3] - evals[0], abs=1e-5)
    assert all(f"eval_before/{mean}" not in r for r in rows[1:])  # the baseline is logged once, with the first step
    assert (e2e[1] / "samples" / "eval_before_00000.png").is_file()
    assert (e2e[1] / "samples" / "eval_00002.png").is_file()

    # with an EMA the same run evaluates the EMA: the same baseline (the EMA starts as the weights), then not
    # the weights (0.5 w0 + 0.5 w1 after the first step)
    _train(tmp_path, "e2e-ema", "learner.ema_decay=0.5")
    ema_rows = read_metrics(tmp_path / "e2e-ema")
    assert all(r["eval/ema"] == 1 for r in ema_rows)
    assert ema_rows[0]["eval_before/" + mean] == evals[0]
    assert ema_rows[0]["eval/" + mean] != evals[1]

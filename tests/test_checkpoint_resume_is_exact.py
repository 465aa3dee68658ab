"""A job stopped and resumed from its checkpoint ends bit-identical to the same job run straight through:
learner state (weights, optimizer), step, policy version and prompt cursor all come back; the ledger, settled
behind the checkpoints as it goes, still audits every group trained exactly once. The starting policy's
evaluation samples are kept in the run directory, and the resumed job judges against them, not new ones."""

import hashlib
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from orchestration.checkpoints import latest_checkpoint, read_run_state
from orchestration.cli import main
from orchestration.driver import train
from orchestration.reporting import read_metrics
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

SMALLER, LARGER = "jpeg_compressibility_pairwise", "jpeg_incompressibility_pairwise"  # pairwise judges


def _cfg(tmp_path, name, steps):
    return tiny_config(
        f"run.output_dir={tmp_path}",
        f"run.name={name}",
        f"run.num_steps={steps}",
        "grpo.groups_per_step=1",
        "grpo.group_size=4",
        "learner.lr=0.01",
        "run.checkpoint_every=1",
        "run.keep_checkpoints=2",
        "run.ledger_keep_steps=0",  # each checkpoint settles the groups trained before the oldest one kept
        "eval.every=1",  # against the starting policy's samples, made with the first evaluation (step 0)
        "eval.num_prompts=2",
        f"eval.rewards=[{{name: {SMALLER}}}, {{name: {LARGER}}}]",
    )


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory) -> dict:
    """A job of 4 steps run straight through; the same job stopped after 2 steps, its stored starting samples
    replaced by flat images (a JPEG smaller than any sample), then resumed to 4 steps."""
    root = tmp_path_factory.mktemp("resume")
    straight = train(_cfg(root, "straight", 4))
    train(_cfg(root, "resumed", 2))  # "pre-empted" after 2 steps: the final checkpoint is the resume point
    state = read_run_state(latest_checkpoint(root / "resumed"))
    reference = root / "resumed" / "eval_reference" / "samples.safetensors"
    flat = {k: torch.full_like(v, 128) for k, v in load_file(reference).items()}
    save_file(flat, str(reference))
    digest = hashlib.sha256(reference.read_bytes()).hexdigest()
    resumed = train(_cfg(root, "resumed", 4))
    return {"root": root, "straight": straight, "resumed": resumed, "stopped_at": state, "reference": digest}


def test_stop_and_resume_equals_straight_run_and_a_finished_run_resumes_to_nothing(runs, capsys, caplog):
    tmp_path, straight, resumed, state = runs["root"], runs["straight"], runs["resumed"], runs["stopped_at"]
    assert (state.step, state.policy_version) == (2, 2)

    assert resumed.steps == 4 and resumed.reward_means == straight.reward_means
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == [0, 1, 2, 3]
    a = load_file(straight.weights_dir / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.weights_dir / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # the ledger settled what lies before the oldest kept checkpoint (step 3), also across the resume
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "resumed")]) == 0
    out = capsys.readouterr().out
    assert "groups trained:       4" in out and "groups settled:       3" in out and "audit passed" in out

    with caplog.at_level(logging.INFO, logger="flexgrpo"):  # a finished run resumes to nothing: read from disk
        again = train(_cfg(tmp_path, "resumed", 4))
    assert again.steps == 4 and again.reward_means == resumed.reward_means
    assert again.weights_dir == resumed.weights_dir and again.status == "finished"
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 4
    said = [r.getMessage() for r in caplog.records]
    assert any("finished at step 4 before: nothing to train" in line for line in said), said
    assert not any("resumed from" in line for line in said), "no role was started, no step trained again"


def test_a_resumed_run_judges_against_the_stored_starting_samples(runs):
    rows = read_metrics(runs["root"] / "resumed")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r[f"eval/{SMALLER}/win_rate_vs_start"] >= 0 for r in rows[:2])  # before the stop: its own start
    for row in rows[2:]:  # after the resume: against the stored (flat) samples, which every sample loses to
        assert row[f"eval/{SMALLER}/win_rate_vs_start"] == 0.0 and row[f"eval/{LARGER}/win_rate_vs_start"] == 1.0
    reference = runs["root"] / "resumed" / "eval_reference" / "samples.safetensors"
    assert hashlib.sha256(reference.read_bytes()).hexdigest() == runs["reference"]  # not made again

"""A job stopped and resumed from its checkpoint ends bit-identical to the same job run straight through:
learner state (weights, optimizer), step, policy version and prompt cursor all come back; the ledger, settled
behind the checkpoints as it goes, still audits every group trained exactly once."""

import json
import logging

import pytest
from safetensors.torch import load_file

from orchestration.checkpoints import latest_checkpoint, read_run_state
from orchestration.cli import main
from orchestration.driver import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


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
    )


def test_stop_and_resume_equals_straight_run_and_a_finished_run_resumes_to_nothing(ray_local, tmp_path, capsys, caplog):
    straight = train(_cfg(tmp_path, "straight", 4))
    train(_cfg(tmp_path, "resumed", 2))  # "pre-empted" after 2 steps: the final checkpoint is the resume point
    state = read_run_state(latest_checkpoint(tmp_path / "resumed"))
    assert (state.step, state.policy_version) == (2, 2)
    resumed = train(_cfg(tmp_path, "resumed", 4))

    assert resumed.steps == 4 and resumed.reward_means == straight.reward_means
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
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

"""A checkpoint becomes `latest` only once complete: one whose writing failed (a learner rank lost, a crash) is
left as a `.partial` folder that is never read, `latest` still names the one before, and the next checkpoint
written removes the partial; only the newest `keep` complete checkpoints stay."""

import pytest

from orchestration.checkpoints import (
    PARTIAL,
    RunState,
    complete_checkpoints,
    latest_checkpoint,
    read_run_state,
    write_checkpoint,
)


def _save(folder):
    (folder / "learner").mkdir()
    (folder / "learner" / "state.pt").write_bytes(b"weights")


def _fail(folder):
    _save(folder)
    raise RuntimeError("a learner rank died while saving")


def test_a_failed_checkpoint_is_never_latest_and_the_next_one_clears_it(tmp_path):
    write_checkpoint(tmp_path, RunState(3, 3, {}), _save, keep=2)
    with pytest.raises(RuntimeError):
        write_checkpoint(tmp_path, RunState(6, 6, {}), _fail, keep=2)
    assert (tmp_path / "checkpoints" / f"step_000006{PARTIAL}").is_dir()
    assert latest_checkpoint(tmp_path).name == "step_000003"
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000003"]

    write_checkpoint(tmp_path, RunState(9, 9, {}), _save, keep=2)
    assert not list((tmp_path / "checkpoints").glob(f"*{PARTIAL}"))
    assert latest_checkpoint(tmp_path).name == "step_000009"
    assert read_run_state(latest_checkpoint(tmp_path)).policy_version == 9


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (3, 6, 9, 12):
        folder, kept = write_checkpoint(tmp_path, RunState(step, step, {}), _save, keep=2)
    assert [p.name for p in kept] == ["step_000009", "step_000012"] == [p.name for p in complete_checkpoints(tmp_path)]
    assert (folder / "learner" / "state.pt").read_bytes() == b"weights"

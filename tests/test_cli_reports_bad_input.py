"""The `flexgrpo` command turns bad input into one clear line and an exit code (2: usage or config, 1: runtime),
never a traceback, before starting anything."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane
from orchestration.cli import main

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, argv: list[str], code: int) -> str:
    """Run the CLI; check the exit code and that stderr is one line; return it."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def live_run(tmp_path):
    """A run directory whose Redis runs and whose lease is held (a live job, minus the job)."""
    run_dir = tmp_path / "myrun"
    run_dir.mkdir()
    with EmbeddedRedis(run_dir / "redis") as url:
        (run_dir / "redis_url").write_text(url + "\n")
        control = ControlPlane(url, "myrun")
        control.register_run({"run": {"name": "myrun"}})
        control.acquire_lease({"host": "here", "pid": 1}, ttl_s=60)
        yield run_dir, control


def test_bad_config_key_exits_2_naming_it(capsys):
    assert "unknown config key 'grpo.group_sise'" in one_line_error(capsys, ["train", "grpo.group_sise=3"], 2)


def test_missing_recipe_exits_2(capsys, tmp_path):
    assert "does not exist" in one_line_error(capsys, ["train", str(tmp_path / "nope.yaml")], 2)


def test_usage_errors_are_one_line(capsys, tmp_path):
    assert "required" in one_line_error(capsys, [], 2)
    assert "the following arguments are required: run_dir" in one_line_error(capsys, ["status"], 2)
    assert "invalid float value" in one_line_error(capsys, ["command", str(tmp_path), "stop", "--timeout", "x"], 2)


@pytest.mark.parametrize("cmd, extra", [("status", []), ("command", ["stop"]), ("audit", [])])
def test_a_missing_directory_or_one_that_is_no_run(capsys, tmp_path, cmd, extra):
    assert "is not a directory" in one_line_error(capsys, [cmd, str(tmp_path / "nope"), *extra], 2)
    message = one_line_error(capsys, [cmd, str(tmp_path), *extra], 2)
    assert "is not a run directory: no redis_url file" in message


def test_unknown_op_exits_2_listing_the_known_ones(capsys, live_run):
    run_dir, _ = live_run
    assert "unknown command 'explode': one of ['checkpoint'" in one_line_error(
        capsys, ["command", str(run_dir), "explode"], 2
    )


def test_bad_rewards_files_exit_2(capsys, live_run, tmp_path):
    run_dir, control = live_run
    run = ["command", str(run_dir), "swap_reward"]
    assert "swap_reward needs --rewards FILE" in one_line_error(capsys, run, 2)
    assert "nope.yaml does not exist" in one_line_error(capsys, [*run, "--rewards", str(tmp_path / "nope.yaml")], 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: [unclosed\n")
    assert "cannot parse --rewards file" in one_line_error(capsys, [*run, "--rewards", str(bad)], 2)
    bad.write_text("name: clip_score\n")
    assert "must hold a non-empty list of reward specs" in one_line_error(capsys, [*run, "--rewards", str(bad)], 2)
    bad.write_text("- name: no_such_reward\n")
    message = one_line_error(capsys, [*run, "--rewards", str(bad)], 2)
    assert "rewards[0].name must be one of [" in message and "got 'no_such_reward'" in message
    bad.write_text("- nam: clip_score\n")
    assert "unknown config key 'nam'" in one_line_error(capsys, [*run, "--rewards", str(bad)], 2)
    assert "--rewards goes with swap_reward only" in one_line_error(
        capsys, ["command", str(run_dir), "stop", "--rewards", str(bad)], 2
    )
    assert control.redis.llen("flexgrpo:run:myrun:commands") == 0  # nothing was sent


def test_a_finished_run_whose_redis_is_gone(capsys, live_run):
    run_dir, _ = live_run
    (run_dir / "redis_url").write_text("redis://:pw@127.0.0.1:1/0\n")  # nothing listens on port 1
    assert "is not running at 127.0.0.1:1" in one_line_error(capsys, ["command", str(run_dir), "stop"], 1)
    message = one_line_error(capsys, ["status", str(run_dir)], 1)
    assert "is not running" in message and "status.json is missing" in message


def test_a_command_to_a_run_without_a_live_owner_exits_1(capsys, live_run):
    run_dir, control = live_run
    control.release_lease({"host": "here", "pid": 1})
    assert "has no live job to carry the command out" in one_line_error(capsys, ["command", str(run_dir), "stop"], 1)


def test_status_and_command_import_no_torch(live_run):
    run_dir, control = live_run
    code = (
        "import sys; from orchestration.cli import main; "
        f"codes = [main(['status', {str(run_dir)!r}]), main(['command', {str(run_dir)!r}, 'pause', '--no-wait'])]; "
        "print(json.dumps([codes, 'torch' in sys.modules, 'ray' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.splitlines()[-1]) == [[0, 0], False, False]
    assert [c.op for c in control.take_commands()] == ["pause"]

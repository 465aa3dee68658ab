"""The `flexgrpo` command turns bad input into one clear line and a non-zero exit, before starting anything."""

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane
from orchestration.cli import main


def test_bad_config_key_exits_2_naming_it(capsys):
    assert main(["train", "grpo.group_sise=3"]) == 2
    assert "unknown config key 'grpo.group_sise'" in capsys.readouterr().err


def test_missing_recipe_exits_2(capsys, tmp_path):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_command_to_a_directory_that_is_no_run(tmp_path):
    with pytest.raises(SystemExit, match="redis_url not found"):
        main(["command", str(tmp_path), "stop"])


def test_command_and_status_reach_a_run_through_its_redis_url(tmp_path, capsys):
    run_dir = tmp_path / "myrun"
    run_dir.mkdir()
    with EmbeddedRedis(tmp_path / "redis") as url:
        (run_dir / "redis_url").write_text(url + "\n")
        control = ControlPlane(url, "myrun")
        control.register_run({"run": {"name": "myrun"}})
        assert main(["command", str(run_dir), "checkpoint"]) == 0
        assert [c.op for c in control.take_commands()] == ["checkpoint"]
        with pytest.raises(SystemExit, match="swap_reward needs --rewards"):
            main(["command", str(run_dir), "swap_reward"])
        assert main(["status", str(run_dir)]) == 0
        assert '"status": "starting"' in capsys.readouterr().out

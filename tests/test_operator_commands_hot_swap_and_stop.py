"""Operator commands through Redis while a real job runs: a bad reward spec is rejected without stopping it, a
reward swap lands between steps (groups before and after carry their reward versions, training goes on),
pause holds the job until resume, and stop ends the job cleanly."""

import json
import time

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import CommandError, ControlPlane
from orchestration.driver import train
from tests.conftest import alongside, tiny_config, wait_for_step

pytestmark = pytest.mark.slow


def test_swap_reward_mid_run_then_stop(ray_local, tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        cfg = tiny_config(
            f"run.output_dir={tmp_path}",
            "run.name=ops",
            "run.num_steps=200",
            "grpo.groups_per_step=1",
            "grpo.group_size=4",
            f"cluster.redis_url={url}",
        )
        control = ControlPlane(url, "ops")

        def operator():
            wait_for_step(control, 2)
            control.send_command("swap_reward", rewards=[{"name": "no_such_reward"}])
            control.send_command("swap_reward", rewards=[{"name": "jpeg_incompressibility", "weight": 2.0}])
            wait_for_step(control, 6)
            control.send_command("pause")
            deadline = time.monotonic() + 60
            while control.run_info()["status"] != "paused":
                assert time.monotonic() < deadline, "the job did not pause"
                time.sleep(0.02)
            paused_at = int(control.run_info()["step"])
            time.sleep(1.0)
            assert int(control.run_info()["step"]) == paused_at, "a paused job takes no step"
            control.send_command("resume")
            wait_for_step(control, paused_at + 1)
            control.send_command("stop")

        with alongside(operator):
            summary = train(cfg)
        rows = [json.loads(line) for line in (tmp_path / "ops" / "metrics.jsonl").read_text().splitlines()]
        versions = [r["reward/version"] for r in rows]
        assert 6 <= len(rows) < 200, "stop should end the run early"
        assert versions[:2] == [0.0, 0.0] and versions[-1] == 1.0
        assert versions == sorted(versions), "a swap never goes back"
        swapped = [r for r in rows if r["reward/version"] == 1.0]
        assert all(r["reward_mean"] > 0 and "reward/jpeg_incompressibility" in r for r in swapped)
        assert all(r["reward_mean"] < 0 for r in rows if r["reward/version"] == 0.0)
        info = control.run_info()
        assert info["status"] == "finished" and info["reward_version"] == "1"
        assert "no_such_reward" in info["last_command_error"]
        assert summary.steps == len(rows)


def test_unknown_command_is_refused_and_malformed_ones_are_kept(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        control = ControlPlane(url, "cmds")
        with pytest.raises(CommandError, match=r"command must be one of .*got 'explode'"):
            control.send_command("explode")
        control.redis.rpush("flexgrpo:run:cmds:commands", "{not json", json.dumps({"op": "pause"}))
        assert [c.op for c in control.take_commands()] == ["pause"]
        rejected = control.redis.lrange("flexgrpo:run:cmds:rejected_commands", 0, -1)
        assert len(rejected) == 1 and "{not json" in rejected[0]

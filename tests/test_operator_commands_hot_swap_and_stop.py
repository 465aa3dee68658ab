"""Operator commands through Redis while a real job runs, each acknowledged with its outcome: a bad reward spec
is rejected without stopping the job, a reward swap lands between steps (groups before and after carry their
reward versions, training goes on), a command of random bytes is rejected with a reason while the job goes on,
pause holds the job while a checkpoint sent meanwhile is written, resume goes on, and stop ends the job with
status "stopped"."""

import json
import time

import pytest
import redis

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane
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

        outcomes = {}

        def operator():
            wait_for_step(control, 2)
            outcomes["bad"] = control.send_command("swap_reward", rewards=[{"name": "no_such_reward"}])
            outcomes["swap"] = control.send_command(
                "swap_reward", rewards=[{"name": "jpeg_incompressibility", "weight": 2.0}]
            )
            redis.Redis.from_url(url).rpush("flexgrpo:run:ops:commands", bytes(range(128, 192)))  # not UTF-8
            wait_for_step(control, 6)
            control.wait_for_outcome(control.send_command("pause"), timeout_s=60)
            paused_at = int(control.run_info()["step"])
            assert control.run_info()["status"] == "paused"
            outcomes["checkpoint"] = control.wait_for_outcome(control.send_command("checkpoint"), timeout_s=60)
            time.sleep(1.0)
            assert int(control.run_info()["step"]) == paused_at, "a paused job takes no step"
            outcomes["paused_at"] = paused_at
            control.wait_for_outcome(control.send_command("resume"), timeout_s=60)
            wait_for_step(control, paused_at + 1)
            outcomes["stop"] = control.wait_for_outcome(control.send_command("stop"), timeout_s=60)

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
        assert info["status"] == "stopped" and summary.status == "stopped" and info["reward_version"] == "1"
        bad = control.command_outcome(outcomes["bad"])
        assert bad["status"] == "rejected" and "no_such_reward" in bad["reason"]
        assert control.command_outcome(outcomes["swap"])["status"] == "done"
        assert outcomes["checkpoint"]["status"] == "done" and outcomes["stop"]["status"] == "done"
        paused_checkpoint = tmp_path / "ops" / "checkpoints" / f"step_{outcomes['paused_at']:06d}"
        assert (paused_checkpoint / "run_state.json").is_file(), "the checkpoint sent while paused was written"
        (garbage,) = control.rejected_commands()
        assert "utf-8" in garbage["reason"].lower() or "decode" in garbage["reason"].lower()
        assert summary.steps == len(rows) > outcomes["paused_at"]

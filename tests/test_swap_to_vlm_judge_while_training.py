"""Hot swap of the reward model in a running job, from a programmatic reward to the UnifiedReward-Flex judge on
an in-process vLLM engine: the judge loads inside the reward pool while training goes on with the old reward,
then every later group is judged by it and carries the new reward version."""

import json

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane
from orchestration.driver import train
from tests.conftest import alongside, tiny_config, wait_for_step

pytestmark = pytest.mark.long  # a vLLM engine loads while training goes on: as long as the load

FLEX = {
    "name": "unifiedreward_flex",
    "model": "tiny-qwen2.5-vl-judge",
    "backend": "vllm",
    "structured_output": True,
    "structured_text_chars": 3,
    "max_new_tokens": 2048,
    "temperature": 0.0,  # greedy: the random judge's replies are the same every run
    "protocol": "robust",  # its random strings hold raw control characters, which strict JSON refuses
}


def test_judge_loads_while_training_continues(ray_local, tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        cfg = tiny_config(
            f"run.output_dir={tmp_path}",
            "run.name=swap",
            "run.num_steps=300",
            "grpo.groups_per_step=1",
            "grpo.group_size=3",
            f"cluster.redis_url={url}",
        )
        control = ControlPlane(url, "swap")
        requested_at = {}

        def operator():
            wait_for_step(control, 2)
            requested_at["step"] = int(control.run_info()["step"])
            control.send_command("swap_reward", rewards=[FLEX])
            while control.run_info().get("reward_version") != "1":
                wait_for_step(control, int(control.run_info()["step"]) + 1, timeout_s=600)
            wait_for_step(control, int(control.run_info()["step"]) + 2)
            control.send_command("stop")

        with alongside(operator):
            train(cfg)

    rows = [json.loads(line) for line in (tmp_path / "swap" / "metrics.jsonl").read_text().splitlines()]
    first_judged = next(r["step"] for r in rows if r["reward/version"] == 1.0)
    assert first_judged > requested_at["step"] + 1, "training should go on while the judge loads"
    assert all(r["reward/version"] == 0.0 and r["reward_mean"] < 0 for r in rows if r["step"] < first_judged)
    judged = [r for r in rows if r["step"] >= first_judged]
    assert len(judged) >= 2 and all(r["reward/version"] == 1.0 for r in judged)
    assert all(0 <= r["reward_mean"] <= 1 and r["reward/unparsed"] == 0 and r["reward/requests"] >= 3 for r in judged)

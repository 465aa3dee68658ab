"""Fault injection: a rollout actor and then a reward actor are killed while a job runs. Ray restarts them, the
driver re-sends the weights (here from a whole snapshot, in several buckets; through a ring of two buckets:
test_restarted_rollout_worker_samples_with_the_latest_weights.py) and re-queues the lost groups, and the job
finishes every step on-policy."""

import json

import pytest
import ray

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane
from orchestration.driver import train
from tests.conftest import alongside, tiny_config, wait_for_step

pytestmark = pytest.mark.slow


def test_killed_rollout_and_reward_actors_cost_only_their_work(ray_local, tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        cfg = tiny_config(
            "learner.sync_snapshot=device",
            "learner.sync_bucket_mb=0.01",  # the LoRA in several buckets
            f"run.output_dir={tmp_path}",
            "run.name=faults",
            "run.num_steps=8",
            "grpo.groups_per_step=1",
            "grpo.group_size=4",
            f"cluster.redis_url={url}",
        )
        control = ControlPlane(url, "faults")

        def saboteur():
            for step, actor in ((2, "rollout-0"), (4, "reward-0")):
                wait_for_step(control, step)
                ray.kill(ray.get_actor(actor), no_restart=False)  # the fault: the actor dies, Ray restarts it

        with alongside(saboteur):
            summary = train(cfg)
        rows = [json.loads(line) for line in (tmp_path / "faults" / "metrics.jsonl").read_text().splitlines()]
        assert summary.steps == 8 and [r["step"] for r in rows] == list(range(8))
        assert rows[-1]["system/recoveries"] >= 1
        # after each recovery the restarted rollout worker got the current weights: still exactly on-policy
        assert all(r["loss/ratio_max_dev"] < 1e-5 for r in rows)
        assert {g["state"] for g in control.ledger_states().values()} == {"trained"}
        audit = control.audit(final_step=8)
        assert audit.ok and audit.trained == 8, audit
        assert control.run_info()["status"] == "finished"

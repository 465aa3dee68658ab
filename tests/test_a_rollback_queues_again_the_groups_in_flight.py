"""Going back to a run's start (a job that died before its first checkpoint) queues again every group the ledger
holds in flight or trained, under the prompt-stream indexes the trainer admits them by, and forgets the metrics
logged after it, in the run's files and in Redis. A job stopped between two steps has nothing in flight, so the
resume tests do not see this; a job killed mid-step does (tests/test_kill9_of_any_process_costs_no_step.py)."""

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane
from orchestration.checkpoints import RunState
from orchestration.reporting import MetricsLogger, read_metrics
from orchestration.run_checkpoints import RunCheckpoints
from tests.conftest import tiny_config


def test_a_rollback_to_the_start_queues_every_group_again_and_forgets_later_metrics(tmp_path):
    cfg = tiny_config(f"run.output_dir={tmp_path}", "logging.tensorboard=false")
    with EmbeddedRedis(tmp_path / "redis") as url, MetricsLogger(tmp_path, cfg.logging) as logger:
        control = ControlPlane(url, cfg.run.name)
        control.register_run({})
        control.ledger_queue(["g000000", "g000001", "g000002", "g000007"])
        for group in ("g000000", "g000001", "g000002"):
            control.ledger_sampled(group, "rollout-0", 0)
        control.ledger_scored("g000000", 0)
        control.ledger_scored("g000001", 0)
        control.ledger_commit_step(0, ["g000000"])  # trained at step 0; g000001 scored, g000002 sampled, g000007 queued
        logger.log(0, {"reward_mean": 1.0})
        control.publish_metrics(0, {"reward_mean": 1.0})
        assert len(read_metrics(tmp_path)) == len(control.read_metrics()) == 1

        checkpoints = RunCheckpoints(cfg, None, control, logger, tmp_path)  # (no checkpoint: no learner to load)
        state, requeued = checkpoints.roll_back(None, RunState(0, 0, {}, 0))

        assert state.step == 0 and sorted(requeued) == [0, 1, 2, 7]
        assert {g["state"] for g in control.ledger_states().values()} == {"queued"}
        assert read_metrics(tmp_path) == [] and control.read_metrics() == []

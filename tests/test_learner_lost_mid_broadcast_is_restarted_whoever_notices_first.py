"""A learner rank that dies while it broadcasts weights is often noticed first by a rollout worker: its receive
fails (the sender is gone) while the driver waits for groups, before any call on the learner fails. That failure
is a task error of the worker, not an actor error of the learner; the recovery must still restart the learner
(the job used to end there: a CI run lost its job after the kill -9 of learner-0)."""

from __future__ import annotations

import pytest
import ray

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


@ray.remote
def receive_from_a_dead_sender() -> None:
    """The fault as a rollout worker reports it (what gloo raises when the broadcasting rank is gone)."""
    raise RuntimeError("Connection closed by peer")


def test_a_failed_receive_after_the_learner_died_restarts_the_learner(ray_local, tmp_path):
    cfg = tiny_config(f"run.output_dir={tmp_path}", "run.name=lost", "grpo.groups_per_step=1", "grpo.group_size=4")
    with trainer(cfg, tmp_path / "lost") as run:
        run.restore(None)
        dead = run.roles.learner.actors[0]
        ray.kill(dead, no_restart=True)
        failed = receive_from_a_dead_sender.remote()
        ray.wait([failed])
        run.weights.receiving = [failed]
        run.recovery.run_step(run.weights.poll)  # what the driver's wait for groups does on each tick
        assert run.recovery.count == 1
        learner = run.roles.learner.actors[0]
        assert learner != dead and ray.get(learner.ready.remote()) == 0  # restored to the start, weights sent
        assert not run.weights.receiving  # the rollout worker received the restored weights
        assert ray.get(run.roles.rollout.actor(0).ready.remote()) == 0

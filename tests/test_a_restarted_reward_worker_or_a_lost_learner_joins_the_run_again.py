"""A role process that dies comes back into the run. The tests share one set of roles (a module-scoped trainer,
as faults come one after another in a long job) and count the recoveries each one adds.

A worker Ray restarted is a new process: no heartbeat, no weights, no hot-swapped reward spec. It joins again
like a lost worker, counted as a recovery, whether or not a call failed first:

- a call failed, and the worker is already back when the driver checks it (Ray restarts a pool actor at once; a
  small one is up again in seconds): it answers, and the pool tells it by its incarnation (before, it was taken
  for one that never died: a CI rehearsal's kill test waited for that recovery);
- it died and came back with no call outstanding, so nothing failed: the pools ask their live workers which
  process they are every few seconds (before, it kept its slot, and a rollout worker's next group waited for
  weights it would never be sent).

A learner rank that dies while it broadcasts weights is often noticed first by a rollout worker: its receive
fails (the sender is gone) while the driver waits for groups, before any call on the learner fails. That failure
is a task error of the worker, not an actor error of the learner; the recovery must still restart the learner
(the job used to end there: a CI run lost its job after the kill -9 of learner-0)."""

from __future__ import annotations

import time

import pytest
import ray

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("again")
    cfg = tiny_config(f"run.output_dir={root}", "run.name=again", "grpo.groups_per_step=1", "grpo.group_size=4")
    with trainer(cfg, root / "again") as t:
        t.restore(None)
        yield t


def restarted(pool, slot: int, deadline: float) -> None:
    """Kill the worker's process and wait until Ray has restarted it (it answers again)."""
    ray.kill(pool.actor(slot), no_restart=False)
    while True:
        try:
            ray.get(pool.actor(slot).incarnation.remote())
            return
        except ray.exceptions.RayActorError:
            assert time.monotonic() < deadline, f"slot {slot} was not restarted"
            time.sleep(0.5)


def joins_again(run, pool, slot: int, first_pid: int, recoveries: int, deadline: float) -> None:
    """Only the pools' own polling (what the pipeline does while it waits) until the worker joined again, once."""
    while run.recovery.count == recoveries or pool.live != [slot]:
        assert time.monotonic() < deadline, f"slot {slot} did not join again ({run.recovery.count} recoveries)"
        run.recovery.poll_pools()
        time.sleep(0.2)
    assert run.recovery.count == recoveries + 1
    beat = run.control.heartbeats()[pool.name_of(slot)]
    assert int(beat["pid"]) != first_pid and pool.check(slot)


@pytest.mark.parametrize("call_failed", [True, False], ids=["after-a-failed-call", "idle"])
def test_a_restarted_reward_worker_joins_again_with_its_heartbeat(run, call_failed):
    pool, deadline, recoveries = run.roles.reward, time.monotonic() + 120, run.recovery.count
    first_pid = int(run.control.heartbeats()["reward-0"]["pid"])
    restarted(pool, 0, deadline)  # it answers before anyone asked how it is
    if call_failed:
        # what a failed scoring call leads to (on a loaded machine the check's answer may come after
        # BUSY_IS_ALIVE_S: it is taken for busy, and the pools' own checks find it within LIVE_CHECK_EVERY_S)
        run.recovery.workers_lost({"reward": {0}})
    joins_again(run, pool, 0, first_pid, recoveries, deadline)


@ray.remote
def receive_from_a_dead_sender() -> None:
    """The fault as a rollout worker reports it (what gloo raises when the broadcasting rank is gone)."""
    raise RuntimeError("Connection closed by peer")


def test_a_failed_receive_after_the_learner_died_restarts_the_learner(run):
    recoveries = run.recovery.count
    dead = run.roles.learner.actors[0]
    ray.kill(dead, no_restart=True)
    failed = receive_from_a_dead_sender.remote()
    ray.wait([failed])
    run.weights.receiving = [failed]
    run.recovery.run_step(run.weights.poll)  # what the driver's wait for groups does on each tick
    assert run.recovery.count == recoveries + 1
    learner = run.roles.learner.actors[0]
    assert learner != dead and ray.get(learner.ready.remote()) == 0  # restored to the start, weights sent
    assert not run.weights.receiving  # the rollout worker received the restored weights
    assert ray.get(run.roles.rollout.actor(0).ready.remote()) == 0

"""A worker Ray restarted is a new process: no heartbeat, no weights, no hot-swapped reward spec. It joins again
like a lost worker, counted as a recovery, whether or not a call failed first:

- a call failed, and the worker is already back when the driver checks it (Ray restarts a pool actor at once; a
  small one is up again in seconds): it answers, and the pool tells it by its incarnation (before, it was taken
  for one that never died: a CI rehearsal's kill test waited for that recovery);
- it died and came back with no call outstanding, so nothing failed: the pools ask their live workers which
  process they are every few seconds (before, it kept its slot, and a rollout worker's next group waited for
  weights it would never be sent)."""

from __future__ import annotations

import time

import pytest
import ray

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


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


def joins_again(run, pool, slot: int, first_pid: int, deadline: float) -> None:
    """Only the pools' own polling (what the pipeline does while it waits) until the worker joined again, once."""
    while run.recovery.count == 0 or pool.live != [slot]:
        assert time.monotonic() < deadline, f"slot {slot} did not join again ({run.recovery.count} recoveries)"
        run.recovery.poll_pools()
        time.sleep(0.2)
    assert run.recovery.count == 1
    beat = run.control.heartbeats()[pool.name_of(slot)]
    assert int(beat["pid"]) != first_pid and pool.check(slot)


@pytest.mark.parametrize("call_failed", [True, False], ids=["after-a-failed-call", "idle"])
def test_a_restarted_reward_worker_joins_again_with_its_heartbeat(ray_local, tmp_path, call_failed):
    cfg = tiny_config(f"run.output_dir={tmp_path}", "run.name=again")
    with trainer(cfg, tmp_path / "again") as run:
        pool, deadline = run.roles.reward, time.monotonic() + 120
        first_pid = int(run.control.heartbeats()["reward-0"]["pid"])
        restarted(pool, 0, deadline)  # it answers before anyone asked how it is
        if call_failed:
            # what a failed scoring call leads to (on a loaded machine the check's answer may come after
            # BUSY_IS_ALIVE_S: it is taken for busy, and the pools' own checks find it within LIVE_CHECK_EVERY_S)
            run.recovery.workers_lost({"reward": {0}})
        joins_again(run, pool, 0, first_pid, deadline)

"""After the learner is restored from a checkpoint, a sample call made before it may wait for a version the
restored learner reaches only after the groups that call holds up (a rollout worker runs one call at a time):
the job stalled so in a CI rehearsal's lost-learner-node phase. A new timeline (`start_timeline`, sent through the
weights thread) voids those calls, the one waiting and those queued; calls of the new timeline sample as before."""

import threading
import time

import pytest

from actors.rollout_worker import RolloutWorker, Superseded
from flexgrpo.records import PromptGroup
from tests.conftest import tiny_config


def test_a_new_timeline_voids_the_waiting_and_the_queued_calls_of_the_old_one():
    cfg = tiny_config()
    worker = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed, version_timeout_s=60)
    group = PromptGroup("g0", "a red cat on a blue sky", 2, seed=1)
    raised: list[BaseException] = []

    def waiting_call():
        try:
            worker.sample(group, min_version=5, timeline=1)  # v5 of the old timeline never comes
        except BaseException as err:  # noqa: BLE001  (surfaced below)
            raised.append(err)

    thread = threading.Thread(target=waiting_call)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive() and not raised, "it waits for its version"
    worker.start_timeline(2)  # the learner was restored
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(raised[0], Superseded), raised
    with pytest.raises(Superseded):  # one queued behind it is void at once
        worker.sample(group, min_version=5, timeline=1)
    trajectory, _ = worker.sample(group, min_version=0, timeline=2)  # the new timeline samples
    assert trajectory.group_id == "g0" and trajectory.policy_version == 0

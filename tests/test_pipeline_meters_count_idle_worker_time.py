"""The pools' figures of a step report: the share of live workers' time with no call outstanding, and groups per
second, from the pipeline's ticks (pure: no Ray)."""

import time

from orchestration.pipeline_meters import PipelineMeters


def test_one_of_two_workers_idle_the_whole_window_is_half_idle():
    meters = PipelineMeters()
    meters.pools["rollout"].done = 2
    time.sleep(0.2)
    meters.tick({"rollout": 1, "reward": 0})  # since the last tick: one rollout worker idle, every reward one busy
    rate, idle = meters.pools["rollout"].take(workers=2)
    assert 0.25 < idle <= 0.5, idle
    assert 2 / 0.5 < rate <= 2 / 0.2, rate
    assert meters.pools["reward"].take(workers=1) == (0.0, 0.0)
    assert meters.pools["rollout"].take(workers=2)[1] == 0.0, "a take starts a new window"

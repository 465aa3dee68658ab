"""Non-blocking weights: publishing version v+1 returns, and the worker has received it, while that worker is
still busy with a group; the group it was sampling carries the old version, the next one the new version."""

import time

import pytest
import ray

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow
HOLD_S = 6.0  # each group holds its worker this long after sampling (a GPU-bound sampler, CPU left free)


def test_publish_returns_before_the_busy_worker_finishes_its_group(ray_local, tmp_path):
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=nonblocking",
        "grpo.groups_per_step=1",
        "grpo.group_size=4",
        "grpo.max_staleness=1",  # two groups in flight: the second is sampled while the first trains
        f"holds.rollout_s={HOLD_S}",
    )
    with trainer(cfg, tmp_path) as t:
        t.restore(None)
        t.pipeline.admit(0)
        first = t.pipeline.take(1, learner_version=0)
        second = next(g for g in t.pipeline.inflight.values() if g is not first[0])
        assert not ray.wait([second.trajectory], timeout=0, fetch_local=False)[0], "the worker is busy with it"

        trained = t.train(first)
        t.pipeline.trained(first, step=0)
        t.version = trained.version
        start = time.monotonic()
        header = t.weights.publish()
        received = ray.get(t.weights.receiving, timeout=HOLD_S)  # the worker's weights thread took it in
        took = time.monotonic() - start
        still_busy = not ray.wait([second.trajectory], timeout=0, fetch_local=False)[0]

        assert header.version == 1 and received == [1]
        assert still_busy, f"publish and receive took {took:.2f} s and should not wait for the group in progress"
        assert ray.get(second.trajectory).policy_version == 0  # sampled before the switch: never mixes versions
        t.pipeline.admit(1)
        third = t.pipeline.take(2, learner_version=1)[-1]
        assert third.group.group_id == "g000002" and third.scored.policy_version == 1

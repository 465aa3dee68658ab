"""A learner rank fetches its groups' trajectories from the object store itself (`train_step_from_store`). When
one of them died with its node, the rank trains nothing, keeps its version and weights, and names the lost group,
so the driver can queue it again; with every trajectory there, the same call trains one step. (A single-node Ray
keeps an object alive when its maker dies, so the fault here is a trajectory whose maker died before returning
it; the multi-node tests lose real nodes.)"""

import time

import pytest
import ray
import torch

from actors.rollout_worker import RolloutWorker
from flexgrpo.net import free_port
from flexgrpo.records import PromptGroup
from learner.learner import GRPOLearner
from tests.conftest import scored, tiny_config

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=0, num_gpus=0)
class DyingSampler:
    """Stands in for a rollout worker whose node dies while its result is still to come."""

    def sample(self, value):
        time.sleep(60)
        return value


def test_lost_trajectory_is_named_and_nothing_is_trained(ray_local):
    cfg = tiny_config("grpo.group_size=4", "grpo.groups_per_step=2")
    worker = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed)
    learner = GRPOLearner(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port())
    kept, _ = worker.sample(PromptGroup("g0", "a red cat on a blue sky", 4, seed=1))
    doomed, _ = worker.sample(PromptGroup("g1", "a green tree by the sea", 4, seed=2))
    scores = [scored(kept, [1.0, -1.0, 0.5, -0.5]), scored(doomed, [0.2, -0.2, 0.1, -0.1])]
    sampler = DyingSampler.remote()
    doomed_ref = sampler.sample.remote(doomed)
    kept_ref = ray.put(kept)
    ray.kill(sampler)  # its node is gone, and the trajectory it owed with it

    before = learner.trainable_state()
    out = learner.train_step_from_store(scores, [("g0", kept_ref), ("g1", doomed_ref)])
    assert out.lost == ("g1",) and out.version == 0 and learner.version == 0
    assert all(torch.equal(before[n], v) for n, v in learner.trainable_state().items())

    out = learner.train_step_from_store(scores, [("g0", kept_ref), ("g1", ray.put(doomed))])
    assert out.lost == () and out.version == 1 and out.metrics["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-5)

"""Why a checkpoint needs no RNG states: every random draw of a role is a function of seeds it is given, never of
a generator's running state. A rollout worker's noise comes from (run seed, group seed, sample index); the
learner draws nothing. So a restarted role, or one that did other work before, with its global generators in
any state, gives the same samples and the same update bit for bit."""

import random

import numpy as np
import torch

from actors.rollout_worker import RolloutWorker
from flexgrpo.net import free_port
from flexgrpo.records import PromptGroup
from learner.learner import GRPOLearner
from tests.conftest import scored, tiny_config


def scramble_global_generators(seed: int) -> None:
    """Put torch's, numpy's and Python's global generators in some other state, as other work would."""
    torch.manual_seed(seed)
    torch.rand(seed % 97 + 1)
    np.random.seed(seed)
    random.seed(seed)


def test_a_group_samples_the_same_whatever_the_worker_did_before():
    cfg = tiny_config("grpo.group_size=4")
    group = PromptGroup("g000005", "a red cat on a blue car", 4, seed=5)
    fresh = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed)
    busy = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed)
    for i in range(2):  # other groups first, then generators in another state
        busy.sample(PromptGroup(f"g{i:06d}", "a green tree", 4, seed=i))
    scramble_global_generators(1234)
    (a, media_a), (b, media_b) = fresh.sample(group), busy.sample(group)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    assert torch.equal(media_a.media, media_b.media)

    other_run = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed + 1)
    assert not torch.equal(other_run.sample(group)[0].latents, a.latents)  # the seeds do matter


def test_a_learner_step_is_the_same_after_a_reload_whatever_the_generators(tmp_path):
    cfg = tiny_config("grpo.group_size=4", "grpo.groups_per_step=1", "learner.lr=0.05")
    worker = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed)
    learner = GRPOLearner(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port())
    trajectory, _ = worker.sample(PromptGroup("g000000", "a green tree by the sea", 4, seed=0))
    step = [scored(trajectory, [1.0, -1.0, 0.5, -0.5])]
    learner.save_checkpoint(tmp_path / "v0")

    scramble_global_generators(1)
    first = learner.train_step(step, trajectory).metrics
    after_first = learner.trainable_state()
    learner.load_checkpoint(tmp_path / "v0")
    scramble_global_generators(2)
    second = learner.train_step(step, trajectory).metrics
    after_second = learner.trainable_state()

    assert learner.version == 1
    assert first == second, (first, second)
    assert after_first.keys() == after_second.keys()
    assert all(torch.equal(after_first[n], after_second[n]) for n in after_first)

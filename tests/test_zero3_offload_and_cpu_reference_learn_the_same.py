"""ZeRO-3 CPU offload (`learner.offload`) and the frozen reference kept in CPU memory (`learner.reference: cpu`)
change where a full fine-tune's state lives, not what it learns: two steps with the KL on give the same
weights and the same KL as the same learner with everything on the device."""

import pytest
import torch

from actors.rollout_worker import RolloutWorker
from flexgrpo.net import free_port
from flexgrpo.records import PromptGroup
from learner.learner import GRPOLearner
from tests.conftest import copy_weights, scored, tiny_config

pytestmark = pytest.mark.slow


def two_steps(*placement: str) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """Full fine-tune, ZeRO-3, KL to the frozen reference: the weights and the KL after each of two steps."""
    cfg = tiny_config(
        "policy.lora.enabled=false",
        "learner.zero_stage=3",
        "learner.lr=1e-3",
        "grpo.kl_beta=0.01",
        "grpo.group_size=4",
        "grpo.groups_per_step=1",
        "sampler.num_steps=4",
        *placement,
    )
    worker = RolloutWorker(cfg.policy, cfg.sampler, run_seed=0)
    learner = GRPOLearner(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port())
    offloaded = cfg.learner.offload, cfg.learner.offload, cfg.learner.reference == "cpu"
    engines = learner.engine.zero_offload_param(), learner.engine.zero_offload_optimizer()
    assert (*(e is not None for e in engines), learner.reference.zero_offload_param() is not None) == offloaded
    states, kls = [], []
    for step in range(2):
        trajectory, _ = worker.sample(PromptGroup(f"g{step:06d}", "a photo of a red cat", 4, seed=step))
        metrics = learner.train_step([scored(trajectory, [1.0, -1.0, 0.5, -0.5])], trajectory).metrics
        states.append(learner.trainable_state())
        kls.append(metrics["loss/kl"])
        copy_weights(learner, worker)  # the next group is sampled with the new weights
    return states, kls


def test_offload_and_cpu_reference_learn_what_the_device_placement_learns():
    on_device, kl_on_device = two_steps("learner.offload=false", "learner.reference=gpu")
    offloaded, kl_offloaded = two_steps("learner.offload=true", "learner.reference=cpu")
    assert kl_on_device[0] == 0.0 and kl_on_device[1] > 0  # the policy leaves the reference after one step
    assert kl_offloaded == pytest.approx(kl_on_device, rel=1e-5, abs=1e-9)
    for a, b in zip(on_device, offloaded, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(on_device[0][n], on_device[1][n]) for n in on_device[0])  # it did train

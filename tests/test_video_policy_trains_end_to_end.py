"""The tiny Wan video policy trains end to end in one process: a rollout worker samples videos, a reward
worker scores them (JPEG compressibility of the frames), the DeepSpeed learner takes GRPO steps, and the
packed weights flow back to the worker, whose LoRA weights change and whose evaluation videos change too."""

import torch

from actors.rollout_worker import RolloutWorker
from flexgrpo.net import free_port
from flexgrpo.records import PromptGroup
from learner.learner import GRPOLearner
from reward_workers.reward_worker import RewardWorker
from tests.conftest import copy_weights, tiny_config


def test_tiny_wan_trains_grpo_steps_and_its_lora_moves():
    cfg = tiny_config(
        "policy.family=wan",
        "policy.model=tiny-wan",
        "policy.num_frames=5",
        "policy.height=32",
        "policy.width=32",
        "grpo.group_size=4",
        "grpo.groups_per_step=2",
        "sampler.num_steps=4",
        "sampler.eval_num_steps=6",
        "learner.lr=0.05",
    )
    rollout = RolloutWorker(cfg.policy, cfg.sampler, run_seed=cfg.run.seed)
    learner = GRPOLearner(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port())
    judge = RewardWorker(cfg.rewards)
    eval_group = PromptGroup("eval-0", "a blue sea", 2, seed=99)
    eval_before = rollout.evaluate(eval_group)
    lora_before = rollout.trainable_state()

    for step in range(3):
        prompts = ["a cat", "a car"]
        groups = [PromptGroup(f"s{step}-g{i}", p, 4, seed=10 * step + i) for i, p in enumerate(prompts)]
        trajectories, scored = [], []
        for group in groups:
            trajectory, media = rollout.sample(group)
            assert media.is_video and media.media.shape == (4, 5, 32, 32, 3)
            trajectories.append(trajectory)
            scored.append(judge.score(media))
        assert all(torch.isfinite(s.rewards).all() for s in scored)
        metrics = learner.train_step(scored, *trajectories).metrics
        assert abs(metrics["loss/ratio_mean"] - 1) < 1e-5  # synchronous: sampled at the learner's version
        copy_weights(learner, rollout)

    lora_after = rollout.trainable_state()
    assert learner.version == 3
    assert sum(not torch.equal(lora_before[n], lora_after[n]) for n in lora_before) > len(lora_before) // 2
    assert all(torch.equal(lora_after[n], w.cpu()) for n, w in learner.trainable_state().items())
    eval_after = rollout.evaluate(eval_group)
    assert eval_after.media.shape == eval_before.media.shape == (2, 5, 32, 32, 3)
    assert not torch.equal(eval_before.media, eval_after.media)

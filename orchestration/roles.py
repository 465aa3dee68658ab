"""The composition root: one pool (placement group) per role, the role actors on them, the weight-sync group."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray

from flexgrpo.config import Config, PromptsConfig

if TYPE_CHECKING:
    from cluster.ray_cluster import RoleGroup


@dataclass
class Roles:
    rollout: RoleGroup  # actors.rollout_worker.RolloutWorker, one per rollout GPU
    reward: RoleGroup  # reward_workers.reward_worker.RewardWorker
    learner: RoleGroup  # learner.learner.GRPOLearner, one per DeepSpeed rank

    @property
    def groups(self) -> tuple[RoleGroup, ...]:
        return (self.rollout, self.reward, self.learner)

    def shutdown(self) -> None:
        for group in self.groups:
            group.shutdown()


def preflight(cfg: Config) -> None:
    """What can fail before anything starts: swappable names against their tables, model paths, prompt files."""
    from actors.policies import check_family
    from actors.tiny_models import TINY_MODELS
    from flexgrpo.model_cache import check_model_reference
    from flexgrpo.prompts import load_prompts
    from reward_workers.registry import check_reward_specs
    from reward_workers.tiny_judge import TINY_JUDGE

    check_family(cfg.policy.family)
    check_model_reference("policy.model", cfg.policy.model, TINY_MODELS)
    check_reward_specs(cfg.rewards)
    for i, spec in enumerate(cfg.rewards):
        if spec.model and spec.backend != "http":  # over http, model is the served model's name
            check_model_reference(f"rewards[{i}].model", spec.model, [TINY_JUDGE])
    load_prompts(cfg.prompts)
    load_prompts(PromptsConfig(file=cfg.eval.prompts_file))


def build_roles(cfg: Config) -> Roles:
    """The composition root: one pool (placement group) per role, actors on it, the weight-sync group."""
    from actors.rollout_worker import RolloutWorker
    from cluster.ray_cluster import RoleGroup
    from learner.learner import GRPOLearner
    from reward_workers.reward_worker import RewardWorker

    c = cfg.cluster
    rollout = RoleGroup(c.rollout, name="rollout").spawn(
        RolloutWorker,
        args=(cfg.policy, cfg.sampler),
        kwargs_per_rank=[{"run_seed": cfg.run.seed}] * c.rollout.num_workers,
        max_restarts=3,
    )
    reward = RoleGroup(c.reward, name="reward").spawn(
        RewardWorker,
        args=(cfg.rewards,),
        max_restarts=3,
        max_concurrency=2,  # swaps build while scoring goes on
    )
    learner = RoleGroup(c.learner, name="learner")
    master_addr, master_port = learner.rendezvous_address()  # DeepSpeed's rendezvous, on rank 0's node
    learner.spawn(
        GRPOLearner,
        args=(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner),
        kwargs_per_rank=[
            {"rank": r, "world_size": c.learner.num_workers, "master_addr": master_addr, "master_port": master_port}
            for r in range(c.learner.num_workers)
        ],
    )
    roles = Roles(rollout, reward, learner)
    connect_weight_sync(roles)
    return roles


def wait_until_ready(actors: list, timeout_s: float) -> None:
    """Block until every actor answers (a restarting actor refuses calls until its constructor has run)."""
    deadline = time.monotonic() + timeout_s
    for actor in actors:
        while True:
            try:
                ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def connect_weight_sync(roles: Roles) -> None:
    """A fresh weight-sync group: learner rank 0 is rank 0, rollout workers are 1..N, on a group of their own."""
    host, port = roles.learner.rendezvous_address()
    world = 1 + len(roles.rollout)
    ray.get(
        [roles.learner.actors[0].join_weight_sync.remote(host, port, world)]
        + [w.join_weight_sync.remote(host, port, 1 + i, world) for i, w in enumerate(roles.rollout.actors)]
    )

"""The rollout worker: holds a copy of the policy, samples prompt groups, takes weight updates between groups."""

from __future__ import annotations

import torch

from actors.policies import build_policy
from actors.policies.base import trainable_parameters
from actors.rollout import sample_eval_group, sample_group
from flexgrpo.config import PolicyConfig, SamplerConfig
from flexgrpo.records import MediaGroup, PromptGroup, TrajectoryGroup, WeightUpdate
from flexgrpo.weight_transport import WeightSyncGroup, empty_buffer, unpack_into


class RolloutWorker:
    def __init__(self, policy_cfg: PolicyConfig, sampler_cfg: SamplerConfig, *, run_seed: int) -> None:
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.policy = build_policy(policy_cfg, self.device)
        self.params = trainable_parameters(self.policy.transformer)  # what the learner trains and sends
        self.policy.transformer.requires_grad_(False)  # sampling needs no gradients
        self.sampler_cfg = sampler_cfg
        self.run_seed = run_seed
        self.version = 0
        self._sync: WeightSyncGroup | None = None

    def ready(self) -> int:
        """Answers once the actor is up (after a restart too); returns its current version."""
        return self.version

    def sample(self, group: PromptGroup) -> tuple[TrajectoryGroup, MediaGroup]:
        """Sample one group at the current policy version (a group never mixes versions)."""
        return sample_group(self.policy, group, self.sampler_cfg, run_seed=self.run_seed, policy_version=self.version)

    def evaluate(self, group: PromptGroup) -> MediaGroup:
        """ODE samples of `group` at the current version, `eval_num_steps` steps, reproducible by seed."""
        return sample_eval_group(
            self.policy, group, self.sampler_cfg, run_seed=self.run_seed, policy_version=self.version
        )

    def join_weight_sync(self, host: str, port: int, rank: int, world_size: int) -> None:
        self._sync = WeightSyncGroup(host, port, rank, world_size, self.device)

    def receive_weights(self, header: WeightUpdate) -> int:
        """Receive the learner's broadcast of `header` and load it; returns the new policy version."""
        assert self._sync is not None, "join_weight_sync first"
        flat = self._sync.broadcast(empty_buffer(header, self.device))
        unpack_into(self.params, header, flat)
        self.version = header.version
        return self.version

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.params.items()}

"""The rollout worker: holds a copy of the policy, samples prompt groups, takes weight updates between groups.

Weights arrive while a group is being sampled: `receive_weights` runs in the actor's "weights" thread (a Ray
concurrency group of its own) and fills a staging copy of the trained parameters; `sample` switches to the
newest staged version before it starts a group, so a group never mixes versions and a publish never waits for
a group to finish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from actors.policies import build_policy
from actors.policies.base import trainable_parameters
from actors.rollout import sample_eval_group, sample_group
from flexgrpo.config import PolicyConfig, SamplerConfig
from flexgrpo.heartbeat import Heartbeating
from flexgrpo.records import MediaGroup, PromptGroup, TrajectoryGroup, WeightUpdate
from flexgrpo.weight_transport import WeightSyncGroup, bucket_views, check_binds, receive

WEIGHTS_THREAD = "weights"  # the Ray concurrency group that receives weights beside sampling


@dataclass
class _ReceivedCopy:
    """A copy of the trained weights the worker receives into: the policy's, or their EMA (evaluation only).
    Guarded by the worker's `_staged` condition."""

    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # views into the first header's buckets
    version: int = -1  # the version `buffers` holds whole; -1: none
    fresh: bool = False  # received since the worker last loaded it into its parameters


class Superseded(RuntimeError):
    """A call of an older timeline: the learner was restored from a checkpoint since it was made."""


class RolloutWorker(Heartbeating):
    def __init__(
        self,
        policy_cfg: PolicyConfig,
        sampler_cfg: SamplerConfig,
        *,
        run_seed: int,
        hold_s: float = 0.0,
        join_hold_s: float = 0.0,
        version_timeout_s: float = 900.0,
    ) -> None:
        """hold_s, join_hold_s: sleeps after each group and in each weight-sync join (`holds`: tests, benchmarks)"""
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.policy = build_policy(policy_cfg, self.device)
        self.params = trainable_parameters(self.policy.transformer)  # what the learner trains and sends
        self.policy.transformer.requires_grad_(False)  # sampling needs no gradients
        self.sampler_cfg = sampler_cfg
        self.run_seed, self.hold_s, self.version_timeout_s = run_seed, hold_s, version_timeout_s
        self.join_hold_s = join_hold_s
        self.version = 0  # version of the weights groups are sampled with
        self._staging = _ReceivedCopy()  # the newest weights received, loaded before the next group
        self._ema = _ReceivedCopy()  # the newest EMA of the weights received, for evaluation only
        self._staged = threading.Condition()  # guards _staging and _ema
        self._sync: WeightSyncGroup | None = None
        self._timeline = 0  # the newest timeline seen; calls of an older one are void (`start_timeline`)

    def ready(self) -> int:
        """Answers once the actor is up (after a restart too); returns its current version."""
        return self.version

    def sample(self, group: PromptGroup, min_version: int = 0, timeline: int = 0) -> tuple[TrajectoryGroup, MediaGroup]:
        """Sample one group with the newest weights received, waiting until they are at least `min_version`;
        raises Superseded if a newer `timeline` starts meanwhile (or had started)."""
        self._switch_weights(min_version, timeline)
        out = sample_group(self.policy, group, self.sampler_cfg, run_seed=self.run_seed, policy_version=self.version)
        if self.hold_s:
            time.sleep(self.hold_s)  # benchmarks and tests: stands in for a GPU-bound sampler, leaving the CPU free
        return out

    def evaluate(self, group: PromptGroup, min_version: int = 0, ema: bool = False) -> MediaGroup:
        """ODE samples of `group`, `eval_num_steps` steps, reproducible by seed, at version >= `min_version`;
        ema: with the EMA of the weights received for that version (the sampling weights are left as they are)."""
        self._switch_weights(min_version)
        with self._ema_weights(min_version) if ema else nullcontext():
            return sample_eval_group(
                self.policy, group, self.sampler_cfg, run_seed=self.run_seed, policy_version=self.version
            )

    def load_lora(self, folder: str) -> None:
        """`flexgrpo eval`: the adapter a run saved in the diffusers LoRA format into the sampling weights."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(f"{folder}/pytorch_lora_weights.safetensors")
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        result = set_peft_model_state_dict(self.policy.transformer, state)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{folder}: LoRA keys this policy has no place for: {result.unexpected_keys[:3]}")

    def join_weight_sync(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 600) -> None:
        """Join a (new) weight-sync group; call it in the weights thread, after any receive in progress.
        timeout_s: how long the rendezvous waits for the other members."""
        time.sleep(self.join_hold_s)
        self._sync = WeightSyncGroup(host, port, rank, world_size, self.device, timeout_s=timeout_s)

    def receive_weights(self, header: WeightUpdate) -> int:
        """Receive `header.version` from the learner into the staging copy; the next group switches to it (an
        EMA lands in a copy of its own, for evaluation). Runs in the weights thread, beside a group being
        sampled. -> the version received"""
        assert self._sync is not None, "join_weight_sync first"
        with self._staged:
            into = self._ema if header.ema else self._staging
            if not into.buffers:  # views into one flat tensor per bucket: each bucket lands with no copy
                check_binds(header, self.params)
                into.buffers |= bucket_views(header, self.device)
            into.version, into.fresh = -1, False  # until whole (a failed receive leaves nothing to use)
            receive(self._sync, header, into=into.buffers)
            into.version, into.fresh = header.version, True
            self._staged.notify_all()
        return header.version

    def start_timeline(self, timeline: int) -> None:
        """The learner was restored from a checkpoint (call it in the weights thread): the calls of older
        timelines, which may wait for versions the restored learner reaches only after groups they hold up, are
        void from now (Superseded), those running and those queued."""
        with self._staged:
            self._timeline = max(self._timeline, timeline)
            self._staged.notify_all()

    @torch.no_grad()
    def _switch_weights(self, min_version: int, timeline: int | None = None) -> None:
        """Between groups: load the newest staged weights, waiting for `min_version` to arrive if need be (a
        call of `timeline` gives up once a newer one starts)."""
        with self._staged:
            if timeline is not None:
                self.start_timeline(timeline)  # (the condition's lock is reentrant)
            void = (lambda: self._timeline > timeline) if timeline is not None else (lambda: False)
            self._wait_for(lambda: max(self.version, self._staging.version), min_version, "policy version", void)
            if void():
                raise Superseded(f"a sample of timeline {timeline} (v{min_version}) after the learner was restored")
            if self._staging.fresh:  # the last weights received win, also an older version after a rollback
                self._load(self._staging.buffers)
                self.version, self._staging.fresh = self._staging.version, False

    @contextmanager
    def _ema_weights(self, min_version: int) -> Iterator[None]:
        """The EMA received for `min_version` or later in place of the sampling weights while inside."""
        with self._staged, torch.no_grad():
            self._wait_for(lambda: self._ema.version, min_version, "the EMA of version")
            saved = {n: p.detach().clone() for n, p in self.params.items()}
            self._load(self._ema.buffers)
        try:
            yield
        finally:
            self._load(saved)

    @torch.no_grad()
    def _load(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy `weights` into the trained parameters the worker samples with."""
        for name, param in self.params.items():
            param.copy_(weights[name])

    def _wait_for(
        self, held: Callable[[], int], version: int, what: str, void: Callable[[], bool] = lambda: False
    ) -> None:
        """Under `_staged`: wait until `held()` >= `version` (or the call is `void`), at most `version_timeout_s`."""
        if not self._staged.wait_for(lambda: held() >= version or void(), timeout=self.version_timeout_s):
            raise TimeoutError(
                f"rollout worker waited {self.version_timeout_s:.0f} s for {what} {version}; it holds {held()}"
            )

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the weights the next group will be sampled with (the newest received)."""
        self._switch_weights(0)
        return {n: p.detach().cpu().clone() for n, p in self.params.items()}

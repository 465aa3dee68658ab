"""The GRPO learner: a DeepSpeed engine around the policy's trainable parameters.

One instance per DeepSpeed rank. `train_step` re-scores the recorded transitions under the current weights,
applies the clipped GRPO loss (plus the KL to the reference when kl_beta > 0), accumulating gradients over
samples and trained steps, and takes one optimizer step. Beside it: re-scoring the recorded transitions
(rescoring.py), the trained weights and their EMA (trained_weights.py), publishing them to the actors
(publishing.py), export (export.py), checkpoints (checkpointing.py); the learner's remote methods hand over to
them.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from actors.policies import build_policy
from actors.policies.base import adapter_disabled, trainable_parameters
from actors.samplers import get_sampler
from flexgrpo.config import GRPOConfig, LearnerConfig, PolicyConfig, SamplerConfig
from flexgrpo.heartbeat import Heartbeating
from flexgrpo.records import ScoredGroup, TrainedStep, TrajectoryGroup, WeightUpdate
from learner import checkpointing
from learner.export import export, save_lora
from learner.grpo import decoupled_policy_loss, kl_to_reference, staleness_histogram, step_advantages
from learner.publishing import WeightPublishing
from learner.rescoring import rescore, transition_log_probs
from learner.trained_weights import TrainedWeights


def trained_steps_per_sample(cfg: SamplerConfig) -> int:
    """K: transitions recorded and trained per sample."""
    if cfg.train_timesteps == "window":
        return cfg.window_size
    return max(1, math.ceil(cfg.timestep_fraction * cfg.num_steps))


def init_deepspeed_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Join (or create) the learner's default process group. On CPU this uses gloo and skips DeepSpeed's
    shared-memory op, whose first build takes ~40 s of JIT compilation and is not needed for correctness."""
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(0 if not torch.cuda.is_available() else rank % max(1, torch.cuda.device_count())),
    )
    import deepspeed

    if not torch.distributed.is_initialized():
        # Another library in this process (vLLM's in-process engine) may have torn down a default group that
        # DeepSpeed cached: start its group registry afresh.
        groups = importlib.import_module("deepspeed.utils.groups")
        groups._WORLD_GROUP = groups._DATA_PARALLEL_GROUP = groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None
    if not torch.cuda.is_available():
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def micro_batching(grpo: GRPOConfig, cfg: LearnerConfig, sampler: SamplerConfig, world_size: int) -> tuple[int, int]:
    """-> (the micro-batch size, the micro-batches of a learner step on one rank); raises when the step's samples
    do not split evenly over the ranks or `updates_per_step` does not divide the micro-batches."""
    samples_per_rank, rest = divmod(grpo.groups_per_step * grpo.group_size, world_size)
    if rest:
        raise ValueError(
            f"groups_per_step * group_size = {grpo.groups_per_step * grpo.group_size} samples do not "
            f"split evenly over {world_size} learner ranks"
        )
    micro_batch = min(cfg.micro_batch_size, samples_per_rank)
    micro_batches = math.ceil(samples_per_rank / micro_batch) * trained_steps_per_sample(sampler)
    if micro_batches % cfg.updates_per_step:
        raise ValueError(
            f"learner.updates_per_step ({cfg.updates_per_step}) must divide the {micro_batches} micro-batches "
            "of a learner step (samples per rank / micro_batch_size, times the trained steps per sample)"
        )
    return micro_batch, micro_batches


def zero_optimization(cfg: LearnerConfig) -> dict:
    """DeepSpeed's zero_optimization section: the stage, and CPU offload of parameters and optimizer state."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload:
        zero |= {"offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}}
    return zero


def deepspeed_config(cfg: LearnerConfig, micro_batch: int, accumulation: int, mixed_precision: str | None) -> dict:
    """The engine's DeepSpeed config. mixed_precision: "bf16", "fp16" or None (the weights' own dtype)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero_optimization(cfg),
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # offload with the torch AdamW (no DeepSpeed op build)
        "bf16": {"enabled": mixed_precision == "bf16"},
        "fp16": {"enabled": mixed_precision == "fp16"},
        "steps_per_print": 10**9,
    }


def build_engine(model: torch.nn.Module, params: list[Tensor], cfg: LearnerConfig, ds_config: dict):
    """The DeepSpeed engine that trains `params` of `model` with AdamW."""
    import deepspeed

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, dist_init_required=False)
    return engine


def build_reference(model: torch.nn.Module | None, placement: str, ds_config: dict, device: torch.device, zero3: bool):
    """A frozen reference for the KL of a full fine-tune: ZeRO-3 partitioned (offloaded to CPU memory when
    placement is cpu) or a plain module on the device. None for a LoRA (its reference is the adapter off)."""
    if model is None:
        return None
    if not zero3:
        return model.to(device).eval()
    import deepspeed

    zero = {"stage": 3} | ({"offload_param": {"device": "cpu"}} if placement == "cpu" else {})
    config = {k: ds_config[k] for k in ("train_micro_batch_size_per_gpu", "bf16", "fp16")}
    engine, *_ = deepspeed.initialize(model=model, config=config | {"zero_optimization": zero})
    engine.eval()  # DeepSpeedEngine.eval returns None
    return engine


class GRPOLearner(Heartbeating):
    def __init__(
        self,
        policy_cfg: PolicyConfig,
        sampler_cfg: SamplerConfig,
        grpo_cfg: GRPOConfig,
        learner_cfg: LearnerConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 29500,
        hold_s: float = 0.0,
        checkpoint_hold_s: float = 0.0,
    ) -> None:
        self.sampler_cfg, self.grpo_cfg, self.rank = sampler_cfg, grpo_cfg, rank
        init_deepspeed_distributed(rank, world_size, master_addr, master_port)
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        )
        self.policy = build_policy(policy_cfg, self.device, text_encoders=False)  # it re-scores recorded embeddings
        self.step_fn = get_sampler(sampler_cfg.kind)

        self.micro_batch, micro_batches = micro_batching(grpo_cfg, learner_cfg, sampler_cfg, world_size)
        self.updates_per_step, self.hold_s = learner_cfg.updates_per_step, hold_s
        self.checkpoint_hold_s = checkpoint_hold_s  # tests: a window in which a fault lands inside a checkpoint
        params = trainable_parameters(self.policy.transformer)
        self.transformer, self.lora = self.policy.transformer, policy_cfg.lora.enabled
        zero3 = learner_cfg.zero_stage == 3
        needs_copy = grpo_cfg.kl_beta > 0 and not self.lora and learner_cfg.reference != "none"
        reference = copy.deepcopy(self.transformer).requires_grad_(False) if needs_copy else None
        if learner_cfg.activation_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        # LoRA adapters already train in fp32 beside the low-precision base weights; DeepSpeed's mixed precision
        # would cast them (and the parts diffusers keeps in fp32) down, and recomputed log-probs would drift.
        mixed_precision = None if policy_cfg.lora.enabled else policy_cfg.dtype
        accumulation = micro_batches // self.updates_per_step
        ds_config = deepspeed_config(learner_cfg, self.micro_batch, accumulation, mixed_precision)
        self.engine = build_engine(self.transformer, list(params.values()), learner_cfg, ds_config)
        self.version = 0
        self.reference = build_reference(reference, learner_cfg.reference, ds_config, self.device, zero3)
        keeps_ema = learner_cfg.ema_decay > 0 and (zero3 or rank == 0)  # where export reads the EMA
        self.weights = TrainedWeights(params, zero3=zero3, ema_decay=learner_cfg.ema_decay, keeps_ema=keeps_ema)
        bucket_mb, snapshot = learner_cfg.sync_bucket_mb, learner_cfg.sync_snapshot
        self.publishing = WeightPublishing(
            self.weights, rank=rank, device=self.device, bucket_mb=bucket_mb, snapshot=snapshot
        )

    def ready(self) -> int:
        """Answers once the rank is up; returns its policy version."""
        return self.version

    # ---- training -------------------------------------------------------------------------------------

    def train_step(self, step_scores: list[ScoredGroup], *groups: TrajectoryGroup) -> TrainedStep:
        """One learner step on this rank's groups (decoupled PPO; `updates_per_step` optimizer steps).

        step_scores: the scores of every group of the step, on all ranks, so that advantages use the whole step's
        per-prompt statistics. groups: this rank's share (separate arguments, so that Ray hands the ranks the
        trajectories straight from the object store). A group more than `max_staleness` versions old is refused.
        """
        staleness = [self.version - s.policy_version for s in step_scores]
        if max(staleness) > self.grpo_cfg.max_staleness:
            raise ValueError(
                f"a group sampled at version {self.version - max(staleness)} cannot train at version {self.version} "
                f"(grpo.max_staleness = {self.grpo_cfg.max_staleness})"
            )
        by_id = dict(zip([s.group_id for s in step_scores], step_advantages(step_scores, self.grpo_cfg), strict=True))
        advantages = [by_id[g.group_id] for g in groups]  # [G] per own group
        prox = self._proximal_log_probs(list(groups)) if self.updates_per_step > 1 else None  # [G, K] per own group
        samples = [(g, i) for g, group in enumerate(groups) for i in range(group.group_size)]
        stats: list[dict[str, Tensor]] = []
        self.engine.train()
        for start in range(0, len(samples), self.micro_batch):
            chunk = samples[start : start + self.micro_batch]
            adv = torch.stack([advantages[g][i] for g, i in chunk]).to(self.device)  # [B]
            for k in range(groups[0].log_probs.shape[1]):
                out, behaviour_log_prob = self._rescore(groups, chunk, k, model=self.engine)
                # With one optimizer step per learner step, this forward runs at the proximal weights.
                prox_log_prob = (
                    out.log_prob.detach()
                    if prox is None
                    else torch.stack([prox[g][i, k] for g, i in chunk]).to(self.device)
                )  # [B]
                policy_loss, step_stats = decoupled_policy_loss(
                    log_prob=out.log_prob,
                    prox_log_prob=prox_log_prob,
                    behaviour_log_prob=behaviour_log_prob,
                    advantages=adv,
                    clip_range=self.grpo_cfg.clip_range,
                    is_cap=self.grpo_cfg.is_weight_cap,
                )
                loss = policy_loss
                if self.grpo_cfg.kl_beta > 0:
                    with torch.no_grad(), self._reference_model() as reference:
                        ref, _ = self._rescore(groups, chunk, k, model=reference)
                    kl = kl_to_reference(mean=out.mean, ref_mean=ref.mean, std=out.std).mean()
                    loss = loss + self.grpo_cfg.kl_beta * kl
                    step_stats["kl"] = kl.detach()
                self.engine.backward(loss)
                self.engine.step()
                stats.append(step_stats | {"policy_loss": policy_loss.detach(), "loss": loss.detach()})
        if self.hold_s:
            time.sleep(self.hold_s)  # benchmarks: stands in for a GPU-bound learner, leaving the CPU free
        self.weights.update_ema()
        self.version += 1
        metrics = {f"loss/{k}": torch.stack([s[k] for s in stats]).mean().item() for k in stats[0]}
        for key in ("is_weight_mean", "is_weight_max", "is_truncated_frac", "kl_behaviour_prox", "behaviour_clip_frac"):
            metrics[f"offpolicy/{key}"] = metrics.pop(f"loss/{key}")
        metrics["offpolicy/is_weight_max"] = torch.stack([s["is_weight_max"] for s in stats]).max().item()
        metrics |= staleness_histogram(staleness)
        grad_norm = self.engine.get_global_grad_norm()
        metrics["loss/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["loss/micro_batches"] = float(len(stats))
        return TrainedStep(version=self.version, metrics=metrics)

    def train_step_from_store(self, step_scores: list[ScoredGroup], own: list[tuple[str, object]]) -> TrainedStep:
        """The actor's entry to `train_step`: this rank fetches its groups itself (`own`: group id and object
        ref each). A trajectory that died with its node fails the fetch; then no rank trains (they agree first,
        as one rank cannot step alone), every rank returns the ids it could not fetch, and the driver queues
        those groups again."""
        import ray

        groups, lost = [], []
        for group_id, ref in own:
            try:
                groups.append(ray.get(ref))
            except (ray.exceptions.ObjectLostError, ray.exceptions.RayActorError):  # died with its node or maker
                lost.append(group_id)
        if _ranks_lost_any(len(lost), self.device):
            return TrainedStep(version=self.version, metrics={}, lost=tuple(lost))
        return self.train_step(step_scores, *groups)

    @torch.no_grad()
    def _proximal_log_probs(self, groups: list[TrajectoryGroup]) -> list[Tensor]:
        """Log-probs of every transition at the weights before this step's first update. -> [G, K] per group"""
        return [self.score_transitions(group).to(self.device) for group in groups]

    def score_transitions(self, group: TrajectoryGroup) -> Tensor:
        """Log-probs of the group's recorded transitions under the current weights. -> [G, K]"""
        return transition_log_probs(self.policy, self.step_fn, self.engine, group, self.micro_batch, self.device)

    def _rescore(self, groups: list[TrajectoryGroup], chunk: list[tuple[int, int]], k: int, model):
        return rescore(self.policy, self.step_fn, model, groups, chunk, k, self.device)

    # ---- weights out: publishing, export, checkpoints (learner/publishing.py, export.py, checkpointing.py) ---

    def weight_header(self, ema: bool = False) -> WeightUpdate:
        """Rank 0: the header of the next publish (ema: of the EMA, for evaluation), which the driver announces
        to the receivers and hands to every rank's `publish_weights`. Raises if the last broadcast failed."""
        return self.publishing.header(self.version, ema)

    def publish_weights(self, header: WeightUpdate) -> WeightUpdate | None:
        """Every rank, after `train_step`: publish `header` while training goes on (`WeightPublishing.publish`;
        with `sync_snapshot: none` the receivers must already be receiving). -> rank 0: the header; others None"""
        return self.publishing.publish(header, self.version)

    def join_weight_sync(self, host: str, port: int, world_size: int, timeout_s: float = 600) -> None:
        """Rank 0: (re)build the weight-sync group, after the broadcasts in flight finish or fail."""
        self.publishing.join(host, port, world_size, timeout_s)

    def trainable_state(self) -> dict[str, Tensor]:
        """A CPU copy of the trained parameters, gathered whole under ZeRO-3."""
        return self.weights.cpu_copy()

    def export(self, folder: str | Path) -> Path | None:
        """Every rank: write the weights (the EMA when `ema_decay` > 0) as diffusers loads them. -> rank 0: folder"""
        pipeline_cls, bucket_mb = type(self.policy.pipeline), self.publishing.bucket_mb
        return export(
            folder, self.transformer, pipeline_cls, self.weights, lora=self.lora, rank=self.rank, bucket_mb=bucket_mb
        )

    def save_lora(self, folder: str | Path) -> Path:
        """Rank 0 saves the adapter in the diffusers LoRA format; under ZeRO-3 every rank must call it."""
        return save_lora(folder, self.transformer, type(self.policy.pipeline), self.weights, rank=self.rank)

    def save_checkpoint(self, folder: str | Path) -> None:
        """DeepSpeed state (weights, optimizer, schedulers) and the policy version; every rank must call it."""
        checkpointing.save_checkpoint(self.engine, folder, self.version)
        time.sleep(self.checkpoint_hold_s)

    def load_checkpoint(self, folder: str | Path) -> int:
        """Restore what `save_checkpoint` wrote; returns the restored policy version."""
        self.version = checkpointing.load_checkpoint(self.engine, folder)
        return self.version

    @contextmanager
    def _reference_model(self) -> Iterator[torch.nn.Module]:
        """The reference policy of the KL: the adapter switched off (LoRA) or the frozen copy."""
        if self.reference is not None:
            yield self.reference
            return
        with adapter_disabled(self.transformer):
            yield self.engine


def _ranks_lost_any(lost_here: int, device: torch.device) -> bool:
    """Did any learner rank lose a trajectory? (a sum over the ranks, on the collectives' device)"""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return lost_here > 0
    total = torch.tensor([lost_here], device=device)
    dist.all_reduce(total)
    return total.item() > 0

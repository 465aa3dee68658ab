"""The GRPO learner: a DeepSpeed engine around the policy's trainable parameters.

One instance per DeepSpeed rank. `train_step` re-scores the recorded transitions under the current weights,
applies the clipped GRPO loss (plus the KL to the reference when kl_beta > 0), accumulating gradients over
samples and trained steps, and takes one optimizer step. Rank 0 publishes the new weights to the actors.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from actors.policies import build_policy
from actors.policies.base import adapter_disabled, batch_embeddings, guided_velocity, trainable_parameters
from actors.samplers import get_sampler
from flexgrpo.config import GRPOConfig, LearnerConfig, PolicyConfig, SamplerConfig
from flexgrpo.heartbeat import Heartbeating
from flexgrpo.records import PromptEmbedding, ScoredGroup, TrainedStep, TrajectoryGroup, WeightUpdate
from flexgrpo.weight_transport import Publisher, WeightSyncGroup, describe, fill_buckets
from learner.grpo import decoupled_policy_loss, kl_to_reference, staleness_histogram, step_advantages


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


def zero_optimization(cfg: LearnerConfig) -> dict:
    """DeepSpeed's zero_optimization section: the stage, and CPU offload of parameters and optimizer state."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload:
        zero |= {"offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}}
    return zero


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
    ) -> None:
        import deepspeed

        self.sampler_cfg, self.grpo_cfg, self.rank = sampler_cfg, grpo_cfg, rank
        init_deepspeed_distributed(rank, world_size, master_addr, master_port)
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        )
        self.policy = build_policy(policy_cfg, self.device)
        self.step_fn = get_sampler(sampler_cfg.kind)

        samples_per_rank, rest = divmod(grpo_cfg.groups_per_step * grpo_cfg.group_size, world_size)
        if rest:
            raise ValueError(
                f"groups_per_step * group_size = {grpo_cfg.groups_per_step * grpo_cfg.group_size} samples do not "
                f"split evenly over {world_size} learner ranks"
            )
        self.micro_batch = min(learner_cfg.micro_batch_size, samples_per_rank)
        micro_batches = math.ceil(samples_per_rank / self.micro_batch) * trained_steps_per_sample(sampler_cfg)
        self.updates_per_step, self.hold_s = learner_cfg.updates_per_step, hold_s
        if micro_batches % self.updates_per_step:
            raise ValueError(
                f"learner.updates_per_step ({self.updates_per_step}) must divide the {micro_batches} micro-batches "
                "of a learner step (samples per rank / micro_batch_size, times the trained steps per sample)"
            )
        self.params = trainable_parameters(self.policy.transformer)
        self.transformer, self.lora = self.policy.transformer, policy_cfg.lora.enabled
        self.zero3 = learner_cfg.zero_stage == 3
        needs_copy = grpo_cfg.kl_beta > 0 and not self.lora and learner_cfg.reference != "none"
        reference = copy.deepcopy(self.transformer).requires_grad_(False) if needs_copy else None
        if learner_cfg.activation_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=learner_cfg.lr,
            betas=tuple(learner_cfg.adam_betas),
            weight_decay=learner_cfg.weight_decay,
        )
        # LoRA adapters already train in fp32 beside the low-precision base weights; DeepSpeed's mixed precision
        # would cast them (and the parts diffusers keeps in fp32) down, and recomputed log-probs would drift.
        mixed_precision = None if policy_cfg.lora.enabled else policy_cfg.dtype
        ds_config = {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": micro_batches // self.updates_per_step,
            "gradient_clipping": learner_cfg.grad_clip,
            "zero_optimization": zero_optimization(learner_cfg),
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,  # offload with the torch AdamW (no DeepSpeed op build)
            "bf16": {"enabled": mixed_precision == "bf16"},
            "fp16": {"enabled": mixed_precision == "fp16"},
            "steps_per_print": 10**9,
        }
        self.engine, *_ = deepspeed.initialize(
            model=self.policy.transformer, optimizer=optimizer, config=ds_config, dist_init_required=False
        )
        self.version = 0
        self._publisher: Publisher | None = None  # rank 0, once it joined the weight-sync group
        self.reference = self._build_reference(reference, learner_cfg.reference, ds_config)
        self.sync_bucket_mb, self.sync_snapshot = learner_cfg.sync_bucket_mb, learner_cfg.sync_snapshot
        self.ema_decay = learner_cfg.ema_decay  # the EMA lives where export reads it: every ZeRO-3 rank, or rank 0
        keeps_ema = self.ema_decay > 0 and (self.zero3 or rank == 0)
        self.ema = [s.detach().float().clone() for s in self._ema_sources()] if keeps_ema else []

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
        self._update_ema()
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

    @torch.no_grad()
    def _proximal_log_probs(self, groups: list[TrajectoryGroup]) -> list[Tensor]:
        """Log-probs of every transition at the weights before this step's first update. -> [G, K] per group"""
        return [self.score_transitions(group).to(self.device) for group in groups]

    @torch.no_grad()
    def score_transitions(self, group: TrajectoryGroup) -> Tensor:
        """Log-probs of the group's recorded transitions under the current weights. -> [G, K]"""
        samples = [(0, i) for i in range(group.group_size)]
        rows = []
        for start in range(0, len(samples), self.micro_batch):
            chunk = samples[start : start + self.micro_batch]
            rows.append(
                torch.stack(
                    [
                        self._rescore([group], chunk, k, model=self.engine)[0].log_prob
                        for k in range(group.log_probs.shape[1])
                    ],
                    dim=1,
                )
            )
        return torch.cat(rows).cpu()

    def _rescore(self, groups: list[TrajectoryGroup], chunk: list[tuple[int, int]], k: int, model):
        """Re-run step k of the samples in `chunk` under `model`, scoring the recorded next latents.
        -> (the step's result, the behaviour log-probs [B] recorded while sampling)"""
        d = self.device
        x = torch.stack([groups[g].latents[i, k] for g, i in chunk]).to(d)  # [B, *latent]
        x_next = torch.stack([groups[g].next_latents[i, k] for g, i in chunk]).to(d)  # [B, *latent]
        sigma = torch.stack([groups[g].sigmas[i, k] for g, i in chunk]).to(d)  # [B]
        next_sigma = torch.stack([groups[g].next_sigmas[i, k] for g, i in chunk]).to(d)  # [B]
        cond = batch_embeddings([groups[g].cond for g, _ in chunk])
        uncond = _batch_optional([groups[g].uncond for g, _ in chunk])
        first = groups[chunk[0][0]]
        v = guided_velocity(self.policy, model, x, sigma, cond, uncond, first.guidance_scale)
        out = self.step_fn(
            x, v, sigma, next_sigma, noise_level=first.noise_level, sigma_1=first.schedule_sigma_1, next_latents=x_next
        )
        behaviour = torch.stack([groups[g].log_probs[i, k] for g, i in chunk]).to(d)  # [B]
        return out, behaviour

    # ---- weights out ----------------------------------------------------------------------------------

    def publish_weights(self, ema: bool = False) -> WeightUpdate | None:
        """Every rank, right after `train_step`: rank 0 snapshots the trained weights into the buckets of their
        header (gathered bucket by bucket under ZeRO-3, a collective) while its sender thread already broadcasts
        the filled buckets, and returns the header once the snapshot is whole; other ranks return None.
        Broadcasts go out strictly in publish order while training goes on. With `sync_snapshot: none` the
        snapshot is two buckets, refilled as they leave: the receivers must already be receiving
        (`weight_header`). Raises if the previous broadcast failed: rebuild the group with `join_weight_sync`
        first. ema: send the EMA of the weights instead (for evaluation; the workers keep it apart from the
        weights they sample with)."""
        header, publisher = self._header(ema), self._publisher
        assert self.rank != 0 or publisher is not None, "join_weight_sync first"
        failed = publisher.error if publisher is not None else None
        with self._ema_swapped() if ema else nullcontext():
            if publisher is None or failed is not None:  # still takes part in the ZeRO-3 gathers
                fill_buckets(header, self._whole, None)
            else:
                publisher.publish(header, lambda out, ready: fill_buckets(header, self._whole, out, ready))
        if self.rank != 0:
            return None
        self._raise_if_broken(failed)
        return header

    def weight_header(self, ema: bool = False) -> WeightUpdate:
        """The header `publish_weights(ema)` sends next: announce it to the receivers before publishing (with
        `sync_snapshot: none` rank 0's publish returns only once most of it is on the wire). Raises, as
        `publish_weights` would, if the previous broadcast failed."""
        if self.rank == 0:
            assert self._publisher is not None, "join_weight_sync first"
            self._raise_if_broken(self._publisher.error)
        return self._header(ema)

    def _header(self, ema: bool) -> WeightUpdate:
        if ema and not self.ema_decay:  # raised on every rank alike
            raise ValueError("publish_weights(ema=True) needs an EMA: set learner.ema_decay > 0")
        return replace(describe(self._meta_params(), self.version, self.sync_bucket_mb), ema=ema)

    def _raise_if_broken(self, failed: Exception | None) -> None:
        if failed is not None:
            raise RuntimeError(
                f"the weight broadcast before v{self.version} failed ({failed!r}); "
                "call join_weight_sync to rebuild the group"
            )

    def join_weight_sync(self, host: str, port: int, world_size: int, timeout_s: float = 600) -> None:
        """Rank 0: (re)build the weight-sync group as its rank 0, after the broadcasts in flight finish or fail
        (each fails within the old group's timeout when a receiver died)."""
        if self._publisher is not None:
            self._publisher.close(timeout_s)
        group = WeightSyncGroup(host, port, 0, world_size, self.device, timeout_s=timeout_s)
        snapshot_device = torch.device("cpu") if self.sync_snapshot == "cpu" else self.device
        self._publisher = Publisher(group, snapshot_device, slots=2 if self.sync_snapshot == "none" else None)

    def trainable_state(self) -> dict[str, Tensor]:
        """A CPU copy of the trained parameters, gathered whole under ZeRO-3."""
        with self._gathered():
            return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    def export(self, folder: str | Path) -> Path | None:
        """Every rank: write the weights for evaluation and release, the EMA when `ema_decay` > 0. A LoRA goes
        in the diffusers LoRA format (`pipeline.load_lora_weights(folder)`), a full fine-tune as the transformer
        (`<TransformerClass>.from_pretrained(folder)`). Rank 0 returns the folder, others None."""
        with self._ema_swapped():
            if self.lora:
                self.save_lora(folder)
                return Path(folder) if self.rank == 0 else None
            whole = self._meta_params()
            state = {n: torch.empty_like(t, device="cpu") for n, t in whole.items()} if self.rank == 0 else None
            fill_buckets(describe(whole, self.version, self.sync_bucket_mb), self._whole, state)
        if state is None:
            return None
        self._save_transformer(Path(folder), state)
        return Path(folder)

    def save_lora(self, folder: str | Path) -> Path:
        """Rank 0 saves the adapter in the diffusers LoRA format (loads with `pipeline.load_lora_weights(folder)`);
        under ZeRO-3 every rank must call it (the adapter is gathered)."""
        from peft.utils import get_peft_model_state_dict

        with self._gathered():
            layers = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.transformer).items()}
        if self.rank == 0:  # with its alpha: without the metadata diffusers would load it at scale 1
            metadata = self.transformer.peft_config["default"].to_dict()
            type(self.policy.pipeline).save_lora_weights(
                folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata
            )
        return Path(folder)

    def save_checkpoint(self, folder: str | Path) -> None:
        """DeepSpeed state (weights, optimizer, schedulers) and the policy version; every rank must call it."""
        self.engine.save_checkpoint(str(folder), tag="state", client_state={"version": self.version})

    def load_checkpoint(self, folder: str | Path) -> int:
        """Restore what `save_checkpoint` wrote; returns the restored policy version."""
        path, client_state = self.engine.load_checkpoint(str(folder), tag="state")
        if path is None:
            raise FileNotFoundError(f"no learner checkpoint in {folder}")
        self.version = int(client_state["version"])
        return self.version

    def _meta_params(self) -> dict[str, Tensor]:
        """The trained parameters as meta tensors of their whole shape and dtype (ZeRO-3 partitions them)."""
        return {
            n: torch.empty(p.ds_shape if self.zero3 else p.shape, dtype=p.dtype, device="meta")
            for n, p in self.params.items()
        }

    @contextmanager
    def _whole(self, names: list[str]) -> Iterator[dict[str, Tensor]]:
        """The trained parameters, with `names` whole while inside (a `BucketSource`)."""
        with self._gathered(names):
            yield self.params

    def _gathered(self, names: list[str] | None = None):
        """Under ZeRO-3, the whole `names` parameters (all trained ones by default) while inside; else nothing."""
        if not self.zero3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([self.params[n] for n in names or self.params])

    # ---- reference, EMA --------------------------------------------------------------------------------

    def _build_reference(self, model: torch.nn.Module | None, placement: str, ds_config: dict):
        """A frozen reference for the KL of a full fine-tune: ZeRO-3 partitioned (offloaded to CPU memory when
        placement is cpu) or a plain module on the device. None for a LoRA (its reference is the adapter off)."""
        if model is None:
            return None
        if not self.zero3:
            return model.to(self.device).eval()
        import deepspeed

        zero = {"stage": 3} | ({"offload_param": {"device": "cpu"}} if placement == "cpu" else {})
        config = {k: ds_config[k] for k in ("train_micro_batch_size_per_gpu", "bf16", "fp16")}
        engine, *_ = deepspeed.initialize(model=model, config=config | {"zero_optimization": zero})
        engine.eval()  # DeepSpeedEngine.eval returns None
        return engine

    @contextmanager
    def _reference_model(self) -> Iterator[torch.nn.Module]:
        """The reference policy of the KL: the adapter switched off (LoRA) or the frozen copy."""
        if self.reference is not None:
            yield self.reference
            return
        with adapter_disabled(self.transformer):
            yield self.engine

    def _ema_sources(self) -> list[Tensor]:
        """What the EMA tracks: this rank's ZeRO-3 partition of each trained tensor, or the whole tensors."""
        return [p.ds_tensor if self.zero3 else p.data for p in self.params.values()]

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights, once per learner step (fp32)."""
        if self.ema:
            torch._foreach_lerp_(self.ema, [s.float() for s in self._ema_sources()], 1 - self.ema_decay)

    @contextmanager
    def _ema_swapped(self) -> Iterator[None]:
        """The EMA in place of the trained weights while inside (nothing without an EMA)."""
        if not self.ema:
            yield
            return
        sources = self._ema_sources()
        saved = [s.detach().clone() for s in sources]
        with torch.no_grad():
            for s, e in zip(sources, self.ema, strict=True):
                s.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for s, b in zip(sources, saved, strict=True):
                    s.copy_(b)

    def _save_transformer(self, folder: Path, state: dict[str, Tensor]) -> None:
        """Write the transformer with `state` in place of its trained weights, as `save_pretrained` does."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_config(folder)
        rest = {k: v.detach().cpu() for k, v in self.transformer.state_dict().items() if k not in state}
        save_file(rest | state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def _batch_optional(embeddings: list[PromptEmbedding | None]) -> PromptEmbedding | None:
    return None if embeddings[0] is None else batch_embeddings(embeddings)  # type: ignore[arg-type]

"""The GRPO learner: a DeepSpeed engine around the policy's trainable parameters.

One instance per DeepSpeed rank. `train_step` re-scores the recorded transitions under the current weights,
applies the clipped GRPO loss (plus the KL to the reference when kl_beta > 0), accumulating gradients over
samples and trained steps, and takes one optimizer step. Rank 0 publishes the new weights to the actors.
"""

from __future__ import annotations

import importlib
import math
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from actors.policies import build_policy
from actors.policies.base import adapter_disabled, batch_embeddings, guided_velocity, trainable_parameters
from actors.samplers import get_sampler
from flexgrpo.config import GRPOConfig, LearnerConfig, PolicyConfig, SamplerConfig
from flexgrpo.records import PromptEmbedding, TrajectoryGroup, WeightUpdate
from flexgrpo.weight_transport import WeightSyncGroup, pack
from learner.grpo import clipped_policy_loss, kl_to_reference


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

    if not torch.cuda.is_available():
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


class GRPOLearner:
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
        self.params = trainable_parameters(self.policy.transformer)
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
            "gradient_accumulation_steps": micro_batches,
            "gradient_clipping": learner_cfg.grad_clip,
            "zero_optimization": {"stage": learner_cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": mixed_precision == "bf16"},
            "fp16": {"enabled": mixed_precision == "fp16"},
            "steps_per_print": 10**9,
        }
        self.engine, *_ = deepspeed.initialize(
            model=self.policy.transformer, optimizer=optimizer, config=ds_config, dist_init_required=False
        )
        self.version = 0
        self._sync: WeightSyncGroup | None = None

    # ---- training -------------------------------------------------------------------------------------

    def train_step(self, groups: list[TrajectoryGroup], advantages: list[Tensor]) -> dict[str, float]:
        """One GRPO update on this rank's groups. advantages: one [G] tensor per group. -> metrics"""
        samples = [(g, i) for g, group in enumerate(groups) for i in range(group.group_size)]
        stats: list[dict[str, Tensor]] = []
        self.engine.train()
        for start in range(0, len(samples), self.micro_batch):
            chunk = samples[start : start + self.micro_batch]
            adv = torch.stack([advantages[g][i] for g, i in chunk]).to(self.device)  # [B]
            for k in range(groups[0].log_probs.shape[1]):
                out, batch = self._rescore(groups, chunk, k, model=self.engine)
                policy_loss, step_stats = clipped_policy_loss(
                    log_prob=out.log_prob,
                    old_log_prob=batch["old_log_prob"],
                    advantages=adv,
                    clip_range=self.grpo_cfg.clip_range,
                )
                loss = policy_loss
                if self.grpo_cfg.kl_beta > 0:
                    with torch.no_grad(), adapter_disabled(self.policy.transformer):
                        ref, _ = self._rescore(groups, chunk, k, model=self.engine)
                    kl = kl_to_reference(mean=out.mean, ref_mean=ref.mean, std=out.std).mean()
                    loss = loss + self.grpo_cfg.kl_beta * kl
                    step_stats["kl"] = kl.detach()
                self.engine.backward(loss)
                self.engine.step()
                stats.append(step_stats | {"policy_loss": policy_loss.detach(), "loss": loss.detach()})
        self.version += 1
        metrics = {f"loss/{k}": torch.stack([s[k] for s in stats]).mean().item() for k in stats[0]}
        grad_norm = self.engine.get_global_grad_norm()
        metrics["loss/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["loss/micro_batches"] = float(len(stats))
        return metrics

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
        """Re-run step k of the samples in `chunk` under `model`, scoring the recorded next latents."""
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
        old = torch.stack([groups[g].log_probs[i, k] for g, i in chunk]).to(d)  # [B]
        return out, {"old_log_prob": old}

    # ---- weights out ----------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, Tensor]:
        """A CPU copy of the trained parameters, gathered whole under ZeRO-3."""
        with self._gathered():
            return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    def join_weight_sync(self, host: str, port: int, world_size: int) -> None:
        self._sync = WeightSyncGroup(host, port, 0, world_size, self.device)

    def weight_header(self) -> WeightUpdate:
        with self._gathered():
            header, _ = pack(self.params, self.version)
        return header

    def publish_weights(self) -> int:
        """Broadcast the current trained parameters to the rollout workers; returns the version sent."""
        assert self._sync is not None, "join_weight_sync first"
        with self._gathered():
            _, flat = pack(self.params, self.version)
        self._sync.broadcast(flat.to(self.device))
        return self.version

    def save_lora(self, folder: str | Path) -> Path:
        """Save the adapter in the diffusers LoRA format (loads with `pipeline.load_lora_weights(folder)`)."""
        from peft.utils import get_peft_model_state_dict

        with self._gathered():
            layers = get_peft_model_state_dict(self.policy.transformer)
        type(self.policy.pipeline).save_lora_weights(folder, transformer_lora_layers=layers)
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

    def _gathered(self):
        if self.engine.zero_optimization_stage() == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.params.values()))
        return nullcontext()


def _batch_optional(embeddings: list[PromptEmbedding | None]) -> PromptEmbedding | None:
    return None if embeddings[0] is None else batch_embeddings(embeddings)  # type: ignore[arg-type]

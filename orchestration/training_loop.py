"""The training loop: each step is a few named, timed phases (rollout, reward, train, sync), plus what keeps a
long job alive: operator commands, checkpoints, and replacing dead workers."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from flexgrpo.config import Config, PromptsConfig, RewardSpec, config_from_dict, to_dict
from flexgrpo.control_plane import Command, ControlPlane
from flexgrpo.prompts import groups_for_step, load_prompts
from flexgrpo.records import PromptGroup, ScoredGroup, TrajectoryGroup
from orchestration.checkpoints import RunState, checkpoint_folder, read_run_state, write_run_state
from orchestration.reporting import MetricsLogger
from orchestration.roles import Roles, connect_weight_sync, wait_until_ready

log = logging.getLogger("flexgrpo")
MAX_RECOVERIES_PER_STEP = 3


@dataclass
class InflightStep:
    """The groups of one step, submitted to the pools and not yet trained on."""

    step: int
    trajectories: list  # ObjectRef[TrajectoryGroup] per group
    media: list  # ObjectRef[MediaGroup] per group
    scores: list  # ObjectRef[ScoredGroup] per group


class TrainingLoop:
    def __init__(self, cfg: Config, roles: Roles, control: ControlPlane, logger: MetricsLogger, run_dir: Path):
        self.cfg, self.roles, self.control, self.logger, self.run_dir = cfg, roles, control, logger, run_dir
        self.prompts = load_prompts(cfg.prompts)
        self.eval_prompts = load_prompts(PromptsConfig(file=cfg.eval.prompts_file))[: cfg.eval.num_prompts]
        self.policy_version = 0
        self.reward_specs: dict[int, list[RewardSpec]] = {0: list(cfg.rewards)}  # reward version -> its spec
        self.pending_swaps: list = []  # ObjectRefs of reward swaps in progress
        self.weight_header = ray.get(roles.learner.actors[0].weight_header.remote())
        self.timings: dict[str, float] = {}
        self.start_step = 0
        self.recoveries = 0  # times a dead rollout or reward actor was replaced
        self.stop_requested = False  # set by the stop command and SIGTERM: checkpoint, then end
        self.checkpoint_requested = False  # set by the checkpoint command
        self.checkpointed_step = -1  # next step of the newest checkpoint written by this loop

    @contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        yield
        self.timings[f"timing/{phase}"] = time.perf_counter() - start

    def run(self) -> None:
        cfg = self.cfg
        inflight: deque[InflightStep] = deque()
        self.control.update_run(status="running")
        steps = range(self.start_step, cfg.run.num_steps)
        bar = tqdm(
            steps, desc="grpo", unit="step", dynamic_ncols=True, initial=self.start_step, total=cfg.run.num_steps
        )
        next_step = self.start_step
        for step in bar:
            self.handle_commands()
            if self.stop_requested:
                log.info("stop requested: ending before step %d", step)
                break
            step_start, self.timings = time.perf_counter(), {}
            # Sampling may run ahead of training by max_staleness steps (0: synchronous Flow-GRPO).
            while len(inflight) <= cfg.grpo.max_staleness and (
                not inflight or inflight[-1].step + 1 < cfg.run.num_steps
            ):
                inflight.append(self.submit(inflight[-1].step + 1 if inflight else step))
            current, trajectories, scored = self.collect(inflight)
            self.control.mark_groups([s.group_id for s in scored], "scored")
            metrics = self.step_metrics(trajectories, scored)  # before training: staleness vs the learner now
            with self.timed("train"):
                metrics |= self.train(trajectories, scored)
            self.control.mark_groups([s.group_id for s in scored], "trained")
            self.control.heartbeat("driver", *(n for g in self.roles.groups for n in g.actor_names))
            with self.timed("sync"):
                self.sync_weights(wait=cfg.grpo.max_staleness == 0)
            if self.wants_eval(step + 1):
                metrics |= self.evaluate(step)
            metrics |= self.timings
            metrics["timing/step"] = time.perf_counter() - step_start
            self.report(step, metrics, current, trajectories, scored)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", loss=f"{metrics['loss/loss']:.2e}")
            next_step = step + 1
            every = cfg.run.checkpoint_every
            if self.checkpoint_requested or (every and next_step % every == 0 and next_step < cfg.run.num_steps):
                self.checkpoint(next_step)
        if self.checkpointed_step != next_step:
            self.checkpoint(next_step)

    def report(
        self,
        step: int,
        metrics: dict[str, float],
        current: InflightStep,
        trajectories: list[TrajectoryGroup],
        scored: list[ScoredGroup],
    ) -> None:
        """The step's metrics to metrics.jsonl, TensorBoard, Redis and a log line; when due, a sample grid with
        the judges' parsed replies beside it."""
        self.logger.log(step, metrics)
        self.control.publish_metrics(step, metrics)
        self.control.update_run(
            step=step + 1, policy_version=self.policy_version, reward_version=int(metrics["reward/version"])
        )
        if self.wants_samples(step):
            self.logger.log_samples(step, [m.media for m in ray.get(current.media)], [t.prompt for t in trajectories])
            self.logger.log_judgements(step, {s.group_id: s.details for s in scored if s.details})
        log.info(
            "step %d/%d  reward %.4f  ratio %.6f  clip %.3f  grad %.3g  rollout %.1fs reward %.1fs train %.1fs "
            "sync %.2fs",
            step + 1,
            self.cfg.run.num_steps,
            metrics["reward_mean"],
            metrics["loss/ratio_mean"],
            metrics["loss/clip_frac"],
            metrics["loss/grad_norm"],
            metrics["timing/rollout"],
            metrics["timing/reward"],
            metrics["timing/train"],
            metrics["timing/sync"],
        )

    def collect(self, inflight: deque[InflightStep]) -> tuple[InflightStep, list[TrajectoryGroup], list[ScoredGroup]]:
        """Wait for the oldest step's groups and scores. A rollout or reward actor that dies costs its work:
        Ray restarts it, the weights are sent again, and every step in flight is sampled again (same groups)."""
        for _ in range(MAX_RECOVERIES_PER_STEP):
            current = inflight[0]
            try:
                with self.timed("rollout"):
                    trajectories: list[TrajectoryGroup] = ray.get(current.trajectories)
                with self.timed("reward"):
                    scored: list[ScoredGroup] = ray.get(current.scores)
                inflight.popleft()
                return current, trajectories, scored
            except ray.exceptions.RayActorError as err:
                log.warning("lost a worker during step %d (%s): recovering", current.step, type(err).__name__)
                self.recover()
                steps = [s.step for s in inflight]
                inflight.clear()
                inflight.extend(self.submit(s) for s in steps)
        raise RuntimeError(f"step {inflight[0].step} failed {MAX_RECOVERIES_PER_STEP} times in a row; giving up")

    def recover(self) -> None:
        """After Ray restarted a dead actor: wait for the pools, restore the reward spec, rebuild the weight-sync
        group (it lost a member) and resend the current weights to every rollout worker."""
        self.recoveries += 1
        self.control.update_run(recoveries=self.recoveries)
        wait_until_ready(self.roles.rollout.actors + self.roles.reward.actors, timeout_s=900)
        latest = max(self.reward_specs)
        ray.get([a.swap.remote(self.reward_specs[latest], latest) for a in self.roles.reward.actors])
        connect_weight_sync(self.roles)
        self.sync_weights(wait=True)

    def submit(self, step: int) -> InflightStep:
        """Hand a step's prompt groups to the rollout pool; each group goes to the reward pool as soon as sampled."""
        groups = groups_for_step(
            self.prompts,
            step,
            groups_per_step=self.cfg.grpo.groups_per_step,
            group_size=self.cfg.grpo.group_size,
            seed=self.cfg.run.seed,
        )
        rollout, reward = self.roles.rollout.actors, self.roles.reward.actors
        trajectories, media = [], []
        for i, group in enumerate(groups):
            t, m = rollout[i % len(rollout)].sample.options(num_returns=2).remote(group)
            trajectories.append(t)
            media.append(m)
        scores = [reward[i % len(reward)].score.remote(m) for i, m in enumerate(media)]
        self.control.mark_groups([g.group_id for g in groups], "sampled")
        return InflightStep(step, trajectories, media, scores)

    def train(self, trajectories: list[TrajectoryGroup], scored: list[ScoredGroup]) -> dict[str, float]:
        from learner.grpo import group_advantages, weighted_advantages

        g = self.cfg.grpo
        versions = [s.reward_version for s in scored]
        norm = {"global_std": g.global_std, "clip": g.adv_clip, "prompts": [t.prompt for t in trajectories]}
        if g.reward_combine == "advantage":
            weights = [{r.name: r.weight for r in self.reward_specs[s.reward_version]} for s in scored]
            advantages = weighted_advantages([s.components for s in scored], weights, versions, **norm)
        else:
            advantages = group_advantages([s.rewards for s in scored], versions, **norm)
        learners = self.roles.learner.actors
        shards = split_evenly(list(zip(trajectories, advantages, strict=True)), len(learners))
        results = ray.get(
            [
                actor.train_step.remote([t for t, _ in shard], [a for _, a in shard])
                for actor, shard in zip(learners, shards, strict=True)
            ]
        )
        self.policy_version += 1
        return {k: sum(r[k] for r in results) / len(results) for k in results[0]}

    def sync_weights(self, *, wait: bool) -> None:
        """Learner rank 0 broadcasts version v+1; each rollout worker loads it between two groups."""
        header = replace(self.weight_header, version=self.policy_version)
        refs = [self.roles.learner.actors[0].publish_weights.remote()]
        refs += [w.receive_weights.remote(header) for w in self.roles.rollout.actors]
        if wait:
            ray.get(refs)

    def step_metrics(self, trajectories: list[TrajectoryGroup], scored: list[ScoredGroup]) -> dict[str, float]:
        rewards = torch.cat([s.rewards for s in scored])
        metrics = {
            "reward_mean": rewards.mean().item(),
            "reward/std": rewards.std().item(),
            "reward/version": float(max(s.reward_version for s in scored)),
            "reward/unparsed": float(sum(s.unparsed for s in scored)),
            "reward/requests": float(sum(s.requests for s in scored)),
            "reward/parse_rate": 1.0 - sum(s.unparsed for s in scored) / max(1, sum(s.requests for s in scored)),
            "rollout/staleness": float(self.policy_version - min(t.policy_version for t in trajectories)),
            "rollout/samples": float(rewards.numel()),
            "system/recoveries": float(self.recoveries),
        }
        for name in scored[0].components:
            metrics[f"reward/{name}"] = (
                torch.cat([s.components[name] for s in scored if name in s.components]).mean().item()
            )
        return metrics

    def wants_samples(self, step: int) -> bool:
        every = self.cfg.logging.sample_grid_every
        return (
            step == 0 or step == self.cfg.run.num_steps - 1 or self.stop_requested or (every > 0 and step % every == 0)
        )

    def wants_eval(self, next_step: int) -> bool:
        every = self.cfg.eval.every
        return every > 0 and (next_step % every == 0 or next_step == self.cfg.run.num_steps)

    def evaluate(self, step: int) -> dict[str, float]:
        """ODE samples of the held-out prompts (fixed seeds, eval step count) at the current weights, scored by
        the reward pool: `eval/` metrics and a grid of the samples."""
        with self.timed("eval"):
            groups = [
                PromptGroup(f"eval-{i}", prompt, self.cfg.eval.samples_per_prompt, seed=i)
                for i, prompt in enumerate(self.eval_prompts)
            ]
            rollout, reward = self.roles.rollout.actors, self.roles.reward.actors
            media_refs = [rollout[i % len(rollout)].evaluate.remote(g) for i, g in enumerate(groups)]
            scored = ray.get([reward[i % len(reward)].score.remote(m) for i, m in enumerate(media_refs)])
        rewards = torch.cat([s.rewards for s in scored])
        metrics = {
            "eval/reward_mean": rewards.mean().item(),
            "eval/reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
            "eval/unparsed": float(sum(s.unparsed for s in scored)),
        }
        self.logger.log_samples(step, [m.media for m in ray.get(media_refs)], self.eval_prompts, name="eval")
        log.info("eval after step %d: reward %.4f", step + 1, metrics["eval/reward_mean"])
        return metrics

    def handle_commands(self) -> None:
        self.check_swaps()
        for command in self.control.take_commands():
            log.info("operator command: %s %s", command.op, command.args)
            if command.op == "swap_reward":
                self.swap_reward(command)
            elif command.op == "stop":
                self.stop_requested = True
            elif command.op == "checkpoint":
                self.checkpoint_requested = True
            elif command.op == "pause":
                self.wait_for_resume()

    def swap_reward(self, command: Command) -> None:
        """Start loading a new reward spec into every reward worker, without waiting: workers keep scoring with
        the old spec until the new one is built, and each scored group carries the version that scored it."""
        from reward_workers.registry import check_reward_specs

        try:
            merged = config_from_dict(to_dict(self.cfg) | {"rewards": command.args.get("rewards", [])})
            check_reward_specs(merged.rewards)
        except ValueError as err:
            self.command_failed(f"swap_reward rejected: {err}")
            return
        version = max(self.reward_specs) + 1
        self.reward_specs[version] = list(merged.rewards)
        self.pending_swaps += [a.swap.remote(merged.rewards, version) for a in self.roles.reward.actors]
        self.control.update_run(reward_version_requested=version, rewards=[asdict(s) for s in merged.rewards])

    def check_swaps(self) -> None:
        """Report reward swaps that failed (the workers then keep their previous spec)."""
        done, self.pending_swaps = ray.wait(self.pending_swaps, num_returns=len(self.pending_swaps), timeout=0)
        for ref in done:
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001  (any failure inside the worker)
                self.command_failed(f"swap_reward failed in a reward worker: {err}")

    def command_failed(self, message: str) -> None:
        log.error(message)
        self.control.update_run(last_command_error=message)

    def wait_for_resume(self) -> None:
        self.control.update_run(status="paused")
        while True:
            ops = [c.op for c in self.control.take_commands()]
            if "stop" in ops:
                self.stop_requested = True
            if "resume" in ops or "stop" in ops:
                break
            time.sleep(0.5)
        self.control.update_run(status="running")

    def checkpoint(self, next_step: int) -> Path:
        """Learner state (every rank), the LoRA, then the run state and the `latest` pointer."""
        with self.timed("checkpoint"):
            folder = checkpoint_folder(self.run_dir, next_step)
            ray.get([a.save_checkpoint.remote(str(folder / "learner")) for a in self.roles.learner.actors])
            if self.cfg.policy.lora.enabled:
                self.save_lora(folder / "lora")
            specs = {str(v): [asdict(r) for r in rs] for v, rs in self.reward_specs.items()}
            write_run_state(folder, RunState(next_step, self.policy_version, specs))
        self.checkpoint_requested, self.checkpointed_step = False, next_step
        log.info("checkpoint %s (%.1fs)", folder, self.timings["timing/checkpoint"])
        return folder

    def restore(self, folder: Path) -> None:
        """Continue from a checkpoint: learner state, step, versions, the reward spec; the actors get the weights."""
        state = read_run_state(folder)
        versions = ray.get([a.load_checkpoint.remote(str(folder / "learner")) for a in self.roles.learner.actors])
        assert set(versions) == {state.policy_version}, f"learner ranks restored versions {versions}"
        self.start_step, self.policy_version = state.step, state.policy_version
        self.reward_specs = {
            int(v): config_from_dict(to_dict(self.cfg) | {"rewards": specs}).rewards
            for v, specs in state.reward_specs.items()
        }
        latest = max(self.reward_specs)
        if latest:
            ray.get([a.swap.remote(self.reward_specs[latest], latest) for a in self.roles.reward.actors])
        self.sync_weights(wait=True)
        self.logger.forget_from(self.start_step)
        log.info(
            "resumed from %s at step %d (policy v%d, reward v%d)", folder, self.start_step, self.policy_version, latest
        )

    def save_lora(self, folder: Path) -> Path:
        return ray.get(self.roles.learner.actors[0].save_lora.remote(str(folder)))


def split_evenly(items: list, n: int) -> list[list]:
    """Contiguous shards of equal size (the learner checks the sizes divide evenly)."""
    size = math.ceil(len(items) / n)
    return [items[i * size : (i + 1) * size] for i in range(n)]

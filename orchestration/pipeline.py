"""The pipeline of prompt groups in flight: admitted, sampled by the rollout pool, scored by the reward pool, then
taken by the learner. Rollout never waits for the learner beyond the staleness bound.

Admission, not dropping: at most (max_staleness + 1) * groups_per_step groups are in flight (admitted and not yet
trained), and a group admitted while the learner is at version v is sampled with weights of version >= v. A group
is therefore trained at most max_staleness versions after the policy that sampled it, unless it was overtaken by
later groups (a slow worker); such a group is dropped and counted. With max_staleness 0 each step's groups are
admitted only after the previous step's weights are published: synchronous Flow-GRPO, exactly.

A group's id, prompt and seed are a function of its index in the run's prompt stream, never of timing.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from flexgrpo.config import GRPOConfig
from flexgrpo.control_plane import ControlPlane
from flexgrpo.prompts import prompt_group
from flexgrpo.records import PromptGroup, ScoredGroup
from orchestration.roles import Roles

log = logging.getLogger("flexgrpo")
SAMPLES_QUEUED_PER_WORKER = 2  # one group sampling, one waiting, so a worker never idles between groups


@dataclass
class GroupInFlight:
    group: PromptGroup
    index: int  # position in the run's prompt stream
    rollout_worker: int
    reward_worker: int
    trajectory: ray.ObjectRef  # TrajectoryGroup, stays in the object store until the learner takes it
    media: ray.ObjectRef  # MediaGroup, for the judges and the sample grids
    score: ray.ObjectRef  # ScoredGroup
    sampled: bool = False
    scored: ScoredGroup | None = None


@dataclass
class PoolMeter:
    """Per-pool figures between two reports: groups done, and the share of time the pool's workers had no work."""

    workers: int
    done: int = 0
    idle_worker_seconds: float = 0.0
    since: float = field(default_factory=time.monotonic)

    def take(self) -> tuple[float, float]:
        """-> (groups/s, idle fraction) since the last take; starts a new window."""
        elapsed = max(1e-9, time.monotonic() - self.since)
        out = (self.done / elapsed, min(1.0, self.idle_worker_seconds / (elapsed * self.workers)))
        self.done, self.idle_worker_seconds, self.since = 0, 0.0, time.monotonic()
        return out


class GroupPipeline:
    def __init__(
        self,
        roles: Roles,
        cfg: GRPOConfig,
        prompts: list[str],
        *,
        seed: int,
        control: ControlPlane,
        steps_left: int,
        next_index: int = 0,
        requeued: list[int] = (),
        on_workers_lost: Callable[[], None],
    ) -> None:
        """on_workers_lost: called after a sample or score failed because its actor died (the group is already
        queued again); it waits for Ray to restart the actor and resends the weights."""
        self.roles, self.cfg, self.prompts, self.seed, self.control = roles, cfg, prompts, seed, control
        self.on_workers_lost = on_workers_lost
        self.groups_wanted = steps_left * cfg.groups_per_step  # groups the learner will still train
        self.next_index = next_index  # first index never admitted
        self.requeued: deque[int] = deque(sorted(requeued))  # admitted before, lost to a crash: admitted first
        self.inflight: dict[str, GroupInFlight] = {}
        self.dropped: dict[str, int] = {}  # reason -> groups dropped since the last report
        self.meters = {"rollout": PoolMeter(len(roles.rollout)), "reward": PoolMeter(len(roles.reward))}
        self._last_tick = time.monotonic()

    # ---- admission --------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Groups in flight at most: the staleness bound, and no more than the rest of the run will train."""
        return min((self.cfg.max_staleness + 1) * self.cfg.groups_per_step, self.groups_wanted)

    def admit(self, learner_version: int) -> None:
        """Start as many groups as the staleness bound and the rollout workers' queues allow."""
        while len(self.inflight) < self.capacity:
            worker = self._least_loaded("rollout")
            if worker is None:
                return
            index = self.requeued.popleft() if self.requeued else self._take_next_index()
            self._start(index, worker, learner_version)

    def _take_next_index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def _start(self, index: int, worker: int, learner_version: int) -> None:
        group = prompt_group(self.prompts, index, group_size=self.cfg.group_size, seed=self.seed)
        rollout = self.roles.rollout.actors[worker]
        trajectory, media = rollout.sample.options(num_returns=2).remote(group, learner_version)
        reward_worker = self._least_loaded("reward", limit=None)
        score = self.roles.reward.actors[reward_worker].score.remote(media)
        self.inflight[group.group_id] = GroupInFlight(group, index, worker, reward_worker, trajectory, media, score)
        self.control.ledger_queue([group.group_id])

    def _least_loaded(self, pool: str, limit: int | None = SAMPLES_QUEUED_PER_WORKER) -> int | None:
        load = self._load(pool)
        worker = min(range(len(load)), key=lambda w: (load[w], w))
        return worker if limit is None or load[worker] < limit else None

    def _load(self, pool: str) -> list[int]:
        """Calls outstanding on each worker of `pool`."""
        if pool == "rollout":
            load = [0] * len(self.roles.rollout)
            for g in self.inflight.values():
                load[g.rollout_worker] += not g.sampled
        else:
            load = [0] * len(self.roles.reward)
            for g in self.inflight.values():
                load[g.reward_worker] += g.scored is None
        return load

    # ---- progress ---------------------------------------------------------------------------------------

    def wait(self, until: list[ray.ObjectRef], learner_version: int) -> None:
        """Keep the pools fed until every ref in `until` is ready (e.g. a learner step in progress)."""
        while ray.wait(until, num_returns=len(until), timeout=0, fetch_local=False)[1]:
            self.admit(learner_version)
            self.progress(timeout_s=0.05, also=until)

    def take(self, n: int, learner_version: int) -> list[GroupInFlight]:
        """The next `n` scored groups fresh enough to train at `learner_version`, oldest index first. Groups that
        ended up staler than the bound are dropped (and counted); the pools stay fed while this waits."""
        bound = learner_version - self.cfg.max_staleness
        while True:
            for g in [g for g in self.inflight.values() if g.scored and g.scored.policy_version < bound]:
                self.drop(g, "stale")
            ready = sorted((g for g in self.inflight.values() if g.scored is not None), key=lambda g: g.index)
            if len(ready) >= n:
                return ready[:n]
            self.admit(learner_version)
            self.progress(timeout_s=1.0)

    def progress(self, timeout_s: float, also: list[ray.ObjectRef] = ()) -> None:
        """Wait up to `timeout_s` for a sample or a score to finish (or for one of `also`), and record it."""
        watched = {g.trajectory.hex(): g for g in self.inflight.values() if not g.sampled}
        watched |= {g.score.hex(): g for g in self.inflight.values() if g.sampled and g.scored is None}
        refs = [g.trajectory if not g.sampled else g.score for g in watched.values()]
        done, _ = ray.wait(refs + list(also), num_returns=1, timeout=timeout_s, fetch_local=False)
        if done:  # take everything ready now, so the groups of one dead worker cost one recovery
            done, _ = ray.wait(refs + list(also), num_returns=len(refs) + len(also), timeout=0, fetch_local=False)
        self._tick()
        lost = []
        for ref in done:
            group = watched.get(ref.hex())
            if group is None:
                continue
            if not group.sampled:
                group.sampled = True  # (or failed: then its score fails too, and is handled there)
                self.meters["rollout"].done += 1
                continue
            try:
                group.scored = ray.get(ref)  # small: rewards and the judges' parsed replies
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as err:
                log.warning("group %s lost with its worker (%s)", group.group.group_id, type(err).__name__)
                lost.append(group)
                continue
            self.meters["reward"].done += 1
            self.control.ledger_sampled(
                group.group.group_id, f"rollout-{group.rollout_worker}", group.scored.policy_version
            )
            self.control.ledger_scored(group.group.group_id, group.scored.reward_version)
        if lost:
            for group in lost:
                del self.inflight[group.group.group_id]
                self.requeued = deque(sorted({*self.requeued, group.index}))
            self.on_workers_lost()

    def _tick(self) -> None:
        """Accumulate idle worker-time since the last event (a worker with no call outstanding is idle)."""
        now = time.monotonic()
        dt, self._last_tick = now - self._last_tick, now
        for pool, meter in self.meters.items():
            meter.idle_worker_seconds += dt * sum(1 for n in self._load(pool) if n == 0)

    # ---- leaving the pipeline ---------------------------------------------------------------------------

    def trained(self, groups: list[GroupInFlight], step: int) -> None:
        """The learner committed `groups` as step `step`: they leave the pipeline together, in the ledger too."""
        self.control.ledger_commit_step(step, [g.group.group_id for g in groups])
        for g in groups:
            del self.inflight[g.group.group_id]
        self.groups_wanted -= len(groups)

    def drop(self, group: GroupInFlight, reason: str) -> None:
        del self.inflight[group.group.group_id]
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.control.ledger_dropped(group.group.group_id, reason)
        log.info("dropped group %s (%s)", group.group.group_id, reason)

    def finish(self) -> None:
        """The run ended: groups still in flight will never be trained."""
        for g in list(self.inflight.values()):
            self.drop(g, "run_end")

    def report(self) -> dict[str, float]:
        """Pool throughput, queue depths and idle fractions since the last report; groups dropped."""
        metrics: dict[str, float] = {}
        for pool, meter in self.meters.items():
            metrics[f"{pool}/groups_per_s"], metrics[f"{pool}/idle_frac"] = meter.take()
        groups = self.inflight.values()
        metrics["rollout/queue_depth"] = float(sum(not g.sampled for g in groups))
        metrics["reward/queue_depth"] = float(sum(g.sampled and g.scored is None for g in groups))
        metrics["learner/queue_depth"] = float(sum(g.scored is not None for g in groups))
        for reason, count in self.dropped.items():
            metrics[f"rollout/dropped_{reason}"] = float(count)
        self.dropped = {}
        return metrics

"""The pipeline of prompt groups in flight: admitted, sampled by the rollout pool, scored by the reward pool, then
taken by the learner. Rollout never waits for the learner beyond the staleness bound.

Admission, not dropping: at most (max_staleness + 1) * groups_per_step groups are in flight (admitted and not yet
trained), and a group admitted while the learner is at version v is sampled with weights of version >= v. A group
is therefore trained at most max_staleness versions after the policy that sampled it, unless it was overtaken by
later groups (a slow worker); such a group is dropped and counted. With max_staleness 0 each step's groups are
admitted only after the previous step's weights are published: synchronous Flow-GRPO, exactly.

A group's id, prompt and seed are a function of its index in the run's prompt stream, never of timing.

Workers are addressed by their slot in the elastic pools (cluster/worker_pool.py): only live workers get groups.
A group whose worker died, or whose objects died with a node, goes back to the queue (same index, same seed)
and the pools are told which workers to check; the pools are polled for workers that came (back) up.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import ray

from cluster.ray_cluster import LOST
from flexgrpo.config import GRPOConfig
from flexgrpo.control_plane import ControlPlane
from flexgrpo.prompts import prompt_group
from flexgrpo.records import PromptGroup, ScoredGroup
from orchestration.pipeline_meters import POOLS, PipelineMeters
from orchestration.roles import Roles
from orchestration.worker_choice import WorkerChoice

log = logging.getLogger("flexgrpo")
SAMPLES_QUEUED_PER_WORKER = 2  # one group sampling, one waiting, so a worker never idles between groups


def start_timeline(roles: Roles, timeline: int) -> None:
    """The rollout workers' sample calls made before timeline `timeline` (the learner restores so far) are void:
    one may wait for a version the restored learner reaches only after the groups it holds up (a dead worker's
    calls died with it)."""
    from actors.rollout_worker import WEIGHTS_THREAD

    for worker in roles.rollout.actors:
        try:
            ray.get(worker.start_timeline.options(concurrency_group=WEIGHTS_THREAD).remote(timeline))
        except LOST:
            pass


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
        timeline: int = 0,
        on_workers_lost: Callable[[dict[str, set[int]]], None],
        on_tick: Callable[[], None],
    ) -> None:
        """timeline: the learner restores so far (a sample call of an older one is void on the workers).
        on_workers_lost({pool: slots}): called after samples or scores failed because their actor or their
        objects died (the groups are already queued again), with the workers that may be dead. on_tick: called
        at every wait for progress (the pools take back workers that came up)."""
        self.roles, self.cfg, self.prompts, self.seed, self.control = roles, cfg, prompts, seed, control
        self.timeline = timeline
        self.on_workers_lost, self.on_tick = on_workers_lost, on_tick
        self.groups_wanted = steps_left * cfg.groups_per_step  # groups the learner will still train
        self.next_index = next_index  # first index never admitted
        self.requeued: deque[int] = deque(sorted(requeued))  # admitted before, lost to a crash: admitted first
        self.inflight: dict[str, GroupInFlight] = {}
        self.meters = PipelineMeters()
        self.choice = WorkerChoice()

    # ---- admission --------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Groups in flight at most: the staleness bound, and no more than the rest of the run will train."""
        return min((self.cfg.max_staleness + 1) * self.cfg.groups_per_step, self.groups_wanted)

    def admit(self, learner_version: int) -> None:
        """Start as many groups as the staleness bound and the live workers' queues allow."""
        while len(self.inflight) < self.capacity:
            worker = self.choice.pick("rollout", self._load("rollout"), limit=SAMPLES_QUEUED_PER_WORKER)
            reward_worker = self.choice.pick("reward", self._load("reward"))
            if worker is None or reward_worker is None:  # none live in a pool (or the rollout queues are full)
                return
            self.choice.given("rollout", worker)
            self.choice.given("reward", reward_worker)
            if self.requeued:  # in the ledger already: queued, or scored when its trajectory died with a node
                self._start(self.requeued.popleft(), worker, reward_worker, learner_version)
            else:
                group = self._start(self._take_next_index(), worker, reward_worker, learner_version)
                self.control.ledger_queue([group.group_id])

    def _take_next_index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def _start(self, index: int, worker: int, reward_worker: int, learner_version: int) -> PromptGroup:
        group = prompt_group(self.prompts, index, group_size=self.cfg.group_size, seed=self.seed)
        rollout = self.roles.rollout.actor(worker)
        trajectory, media = rollout.sample.options(num_returns=2).remote(group, learner_version, self.timeline)
        score = self.roles.reward.actor(reward_worker).score.remote(media)
        self.inflight[group.group_id] = GroupInFlight(group, index, worker, reward_worker, trajectory, media, score)
        return group

    def _load(self, pool: str) -> dict[int, int]:
        """Calls outstanding on each live worker of `pool`, by slot."""
        load = dict.fromkeys(self.roles.pool(pool).live, 0)
        for g in self.inflight.values():
            if pool == "rollout" and not g.sampled and g.rollout_worker in load:
                load[g.rollout_worker] += 1
            elif pool == "reward" and g.scored is None and g.reward_worker in load:
                load[g.reward_worker] += 1
        return load

    # ---- progress ---------------------------------------------------------------------------------------

    def wait(self, until: list[ray.ObjectRef], learner_version: int) -> None:
        """Keep the pools fed until every ref in `until` is ready (e.g. a learner step in progress). A ref that
        failed is raised at once: the other ranks of a learner whose rank died may wait on it forever."""
        while True:
            done, pending = ray.wait(until, num_returns=len(until), timeout=0, fetch_local=False)
            ray.get(done)  # small results (a step's figures); raises the first failure
            if not pending:
                return
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
        if not refs and not also:  # nothing in flight (a pool has no live worker): wait for the pools
            time.sleep(timeout_s)
        done, _ = ray.wait(refs + list(also), num_returns=1, timeout=timeout_s, fetch_local=False)
        if done:  # take everything ready now, so the groups of one dead worker cost one recovery
            done, _ = ray.wait(refs + list(also), num_returns=len(refs) + len(also), timeout=0, fetch_local=False)
        self.meters.tick({pool: sum(n == 0 for n in self._load(pool).values()) for pool in POOLS})
        self.on_tick()
        lost = []
        for ref in done:
            group = watched.get(ref.hex())
            if group is None:
                continue
            if not group.sampled:
                group.sampled = True  # (or failed: then its score fails too, and is handled there)
                self.meters.pools["rollout"].done += 1
                continue
            try:
                group.scored = ray.get(ref)  # small: rewards and the judges' parsed replies
            except LOST as err:
                log.warning("group %s lost with its worker or node (%s)", group.group.group_id, type(err).__name__)
                lost.append(group)
                continue
            self.meters.pools["reward"].done += 1
            self.control.ledger_sampled(
                group.group.group_id, f"rollout-{group.rollout_worker}", group.scored.policy_version
            )
            self.control.ledger_scored(group.group.group_id, group.scored.reward_version)
        if lost:
            self.give_back(lost)
            self.on_workers_lost(
                {"rollout": {g.rollout_worker for g in lost}, "reward": {g.reward_worker for g in lost}}
            )

    def give_back(self, groups: list[GroupInFlight]) -> None:
        """These groups leave the pipeline untrained and are admitted again first (same index, same seed)."""
        for group in groups:
            del self.inflight[group.group.group_id]
        self.requeued = deque(sorted({*self.requeued, *(g.index for g in groups)}))

    def release(self, pool: str, slots: list[int]) -> None:
        """Workers of `pool` are being removed: the groups they still owe go back to the queue."""
        owed = [
            g
            for g in self.inflight.values()
            if (pool == "rollout" and g.rollout_worker in slots and not g.sampled)
            or (pool == "reward" and g.reward_worker in slots and g.scored is None)
        ]
        self.give_back(owed)

    # ---- leaving the pipeline ---------------------------------------------------------------------------

    def trained(self, groups: list[GroupInFlight], step: int) -> None:
        """The learner committed `groups` as step `step`: they leave the pipeline together, in the ledger too."""
        self.control.ledger_commit_step(step, [g.group.group_id for g in groups])
        for g in groups:
            del self.inflight[g.group.group_id]
        self.groups_wanted -= len(groups)

    def drop(self, group: GroupInFlight, reason: str) -> None:
        del self.inflight[group.group.group_id]
        self.meters.dropped[reason] = self.meters.dropped.get(reason, 0) + 1
        self.control.ledger_dropped(group.group.group_id, reason)
        log.info("dropped group %s (%s)", group.group.group_id, reason)

    def finish(self) -> None:
        """The run ended: groups still in flight will never be trained."""
        for g in list(self.inflight.values()):
            self.drop(g, "run_end")

    def report(self) -> dict[str, float]:
        """The pools' figures since the last report (orchestration/pipeline_meters.py) and the queue depths now."""
        groups = self.inflight.values()
        return self.meters.report(self.roles) | {
            "rollout/queue_depth": float(sum(not g.sampled for g in groups)),
            "reward/queue_depth": float(sum(g.sampled and g.scored is None for g in groups)),
            "learner/queue_depth": float(sum(g.scored is not None for g in groups)),
        }

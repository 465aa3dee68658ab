"""The composition root: one pool (placement group) per role, the role actors on them, the weight-sync group."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray

from flexgrpo.config import Config, PromptsConfig
from flexgrpo.control_plane import ControlPlane

if TYPE_CHECKING:
    from cluster.ray_cluster import RoleGroup
    from cluster.worker_pool import WorkerPool


log = logging.getLogger("flexgrpo")

# Reward workers take several groups at once: their judges batch the requests of all groups in flight, and a
# swap builds its models while scoring goes on.
REWARD_CALLS_AT_ONCE = 8
JOIN_GRACE_S = 60.0  # after a broken rendezvous, a member not back this long after its timeout is stuck in it
RENDEZVOUS_PORT_TRIES = 5  # ports tried for the learner ranks' rendezvous, each picked free then taken meanwhile


@dataclass
class Roles:
    rollout: WorkerPool  # actors.rollout_worker.RolloutWorker, one per rollout GPU; grows and shrinks
    reward: WorkerPool  # reward_workers.reward_worker.RewardWorker; grows and shrinks
    learner: RoleGroup  # learner.learner.GRPOLearner, one per DeepSpeed rank; a fixed world

    @property
    def groups(self) -> tuple[WorkerPool | RoleGroup, ...]:
        return (self.rollout, self.reward, self.learner)

    def pool(self, name: str) -> WorkerPool:
        """The elastic pool called `name` (rollout or reward)."""
        return {"rollout": self.rollout, "reward": self.reward}[name]

    def waiting(self) -> str:
        """What the elastic pools' starting workers wait for, in words ("" when all are live)."""
        return "; ".join(self.rollout.waiting() + self.reward.waiting())

    def members(self) -> list[tuple[object, str]]:
        """(actor, name) of every live role actor."""
        return [m for group in self.groups for m in zip(group.actors, group.actor_names, strict=True)]

    def shutdown(self) -> None:
        for group in self.groups:
            group.shutdown()


def preflight(cfg: Config) -> None:
    """What can fail before anything starts: swappable names against their tables, model paths, prompt files."""
    from actors.policies import check_family
    from actors.tiny_models import TINY_MODELS
    from flexgrpo.model_cache import check_model_reference
    from flexgrpo.prompts import load_prompts
    from reward_workers.registry import TINY_REWARD_MODELS, check_reward_specs

    check_family(cfg.policy.family)
    check_model_reference("policy.model", cfg.policy.model, TINY_MODELS)
    for key, specs in (("rewards", cfg.rewards), ("eval.rewards", cfg.eval.rewards)):
        check_reward_specs(specs, key)
        for i, spec in enumerate(specs):
            if spec.model and spec.backend != "http":  # over http, model is the served model's name
                check_model_reference(f"{key}[{i}].model", spec.model, TINY_REWARD_MODELS)
    load_prompts(cfg.prompts)
    load_prompts(PromptsConfig(file=cfg.eval.prompts_file), key="eval.prompts_file")


def build_roles(cfg: Config, control: ControlPlane | None = None) -> Roles:
    """The composition root: one pool (placement group) per role, actors on it, the weight-sync group."""
    from actors.rollout_worker import WEIGHTS_THREAD, RolloutWorker
    from cluster.worker_pool import WorkerPool
    from reward_workers.reward_worker import RewardWorker

    c, holds = cfg.cluster, cfg.holds
    held = holds.rollout_workers  # (None: every worker, those added later too)
    with ExitStack() as built:  # a start that fails part way leaves no actor or placement group behind
        rollout = WorkerPool(
            c.rollout,
            name="rollout",
            cls=RolloutWorker,
            args=(cfg.policy, cfg.sampler),
            kwargs_for=lambda slot: {
                "run_seed": cfg.run.seed,
                "hold_s": holds.rollout_s if held is None or slot in held else 0.0,
                "join_hold_s": holds.join_s,
            },
            concurrency_groups={WEIGHTS_THREAD: 1},  # weights arrive while a group is being sampled
        )
        built.callback(rollout.shutdown)
        reward = WorkerPool(
            c.reward,
            name="reward",
            cls=RewardWorker,
            args=(cfg.rewards,),
            kwargs_for=lambda slot: {"eval_specs": cfg.eval.rewards, "hold_s": holds.reward_s},
            max_concurrency=REWARD_CALLS_AT_ONCE,
        )
        built.callback(reward.shutdown)
        learner = spawn_learner(cfg)
        built.callback(learner.shutdown)
        roles = Roles(rollout, reward, learner)
        for pool in (rollout, reward):
            pool.wait_live(c.start_timeout_s)
        connect_weight_sync(roles, c.weight_sync_join_s)
        if control is not None:
            start_heartbeats(roles.members(), control)
        built.pop_all()  # started: the caller shuts the roles down
    return roles


def start_heartbeats(members: list[tuple[object, str]], control: ControlPlane) -> None:
    """Each (actor, name) beats on its own from now on (call again for an actor that restarted or joined)."""
    ray.get([actor.start_heartbeat.remote(control.url, control.run, name) for actor, name in members])


def spawn_learner(cfg: Config) -> RoleGroup:
    """The DeepSpeed learner ranks on their pool, up and answering, their rendezvous on the node of rank 0 (also
    to replace a dead one). Raises PoolUnplaced when the pool finds no room within `cluster.learner_wait_s`."""
    from cluster.ray_cluster import RoleGroup

    learner = RoleGroup(cfg.cluster.learner, name="learner", wait_s=cfg.cluster.learner_wait_s)
    try:
        return start_learner_ranks(learner, cfg)
    except BaseException:
        learner.shutdown()
        raise


def start_learner_ranks(learner: RoleGroup, cfg: Config) -> RoleGroup:
    """Start one learner rank per bundle of `learner`'s pool and wait until each answers. DeepSpeed's rendezvous
    port is picked free on rank 0's node and bound by rank 0 a moment later: when another process took it in
    between, rank 0's start fails with EADDRINUSE, and the ranks start again on another port."""
    from learner.learner import GRPOLearner

    pool = cfg.cluster.learner
    attempt = 1
    while True:
        master_addr, master_port = learner.rendezvous_address()
        log.info("learner rendezvous for the ranks: %s:%d", master_addr, master_port)
        kwargs = {"world_size": pool.num_workers, "master_addr": master_addr, "master_port": master_port}
        kwargs |= {"hold_s": cfg.holds.learner_s, "checkpoint_hold_s": cfg.holds.checkpoint_s}
        learner.spawn(
            GRPOLearner,
            args=(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner),
            kwargs_per_rank=[kwargs | {"rank": r} for r in range(pool.num_workers)],
        )
        try:
            wait_until_ready(learner.actors, timeout_s=cfg.cluster.start_timeout_s)
            return learner
        except ray.exceptions.RayActorError as err:
            if not rendezvous_port_taken(err) or attempt == RENDEZVOUS_PORT_TRIES:
                raise
            log.warning("the learner's rendezvous port %d was taken before rank 0 bound it: another port", master_port)
            learner.kill_actors()  # the other ranks wait on the taken port
        attempt += 1


def rendezvous_port_taken(err: BaseException) -> bool:
    """Whether `err` says a rendezvous port was bound by another process between being picked free and bound
    (torch's TCPStore, raised through Ray)."""
    return "EADDRINUSE" in str(err)


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


def connect_weight_sync(roles: Roles, timeout_s: float) -> list[int]:
    """A fresh weight-sync group: learner rank 0 is rank 0, the live rollout workers are 1..N, on a group of their
    own. The workers join in their weights thread, after any weights they are still receiving. A worker lost while
    it joins is taken out of the pool (it joins again once Ray restarted it) and the group is built again without
    it; the members of the broken rendezvous give up within `timeout_s` (`cluster.weight_sync_join_s`).
    -> the slots of the rollout workers lost so"""
    lost_in_all = []
    while True:
        lost, port_taken = _join_weight_sync(roles, timeout_s)
        if not lost and not port_taken:
            return lost_in_all
        if port_taken:  # another process bound the chosen port before the learner did: a new one
            log.warning("the weight-sync rendezvous port was taken before the learner bound it: another port")
        if lost:
            for slot in lost:
                roles.rollout.lost(slot)
            names = ", ".join(roles.rollout.name_of(s) for s in lost)
            log.warning("%s lost while joining the weight-sync group: building it again without them", names)
            lost_in_all += lost


def _join_weight_sync(roles: Roles, timeout_s: float) -> tuple[list[int], bool]:
    """One rendezvous of learner rank 0 and the live rollout workers. -> the slots of the workers lost in it
    (once the others gave up on them), and whether the learner found its port taken; raises what else fails,
    a dead learner rank included."""
    from actors.rollout_worker import WEIGHTS_THREAD
    from cluster.ray_cluster import LOST

    host, port = roles.learner.rendezvous_address()
    log.info("weight-sync rendezvous for the learner and the rollout workers: %s:%d", host, port)
    slots = roles.rollout.live
    world = 1 + len(slots)
    learner = roles.learner.actors[0].join_weight_sync.remote(host, port, world, timeout_s)
    joins = {
        roles.rollout.actor(slot)
        .join_weight_sync.options(concurrency_group=WEIGHTS_THREAD)
        .remote(host, port, 1 + i, world, timeout_s): slot
        for i, slot in enumerate(slots)
    }
    pending, lost, port_taken = [learner, *joins], [], False
    while pending and not lost and not port_taken:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done[0])
        except LOST:
            if done[0] == learner:
                raise
            lost.append(joins[done[0]])
        except Exception as err:
            if done[0] != learner or not rendezvous_port_taken(err):
                raise
            port_taken = True
    if lost or port_taken:  # the others wait out the broken rendezvous (their next calls queue behind it)
        finished, hung = ray.wait(pending, num_returns=len(pending), timeout=timeout_s + JOIN_GRACE_S)
        for ref in finished:
            try:
                ray.get(ref)
            except LOST:
                if ref == learner:
                    raise
                lost.append(joins[ref])
            except Exception:  # noqa: BLE001  the rendezvous' timeout, for want of the lost members
                pass
        for ref in (ref for ref in hung if ref in joins):  # stuck past its timeout: its weights thread never frees
            worker = roles.rollout.name_of(joins[ref])
            log.warning("%s is stuck in the broken rendezvous: restarting its process", worker)
            ray.kill(roles.rollout.actor(joins[ref]), no_restart=False)
            lost.append(joins[ref])
    return lost, port_taken

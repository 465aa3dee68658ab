"""How a run maps onto Ray: joining or starting a cluster, and pools of role actors on placement groups."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from flexgrpo.config import ClusterConfig, ConfigError, PoolConfig
from flexgrpo.net import free_port, node_ip

log = logging.getLogger("flexgrpo")

# Passed to every actor so that caches and logs land where the driver's do.
FORWARDED_ENV = (
    "FLEXGRPO_CACHE",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CACHE_ROOT",
    "TORCH_EXTENSIONS_DIR",
    "HF_HUB_OFFLINE",
    "VLLM_CPU_OMP_THREADS_BIND",
)
WORKER_LOG = "workers.log"  # in the run directory: what the role actors print, as Ray relays it to the driver
CONNECT_TIMEOUT_S = 5.0  # a Ray address that does not accept a connection within this fails the job
LOCAL_START_TRIES = 3  # a local Ray start that missed Ray's node registration limit is tried again
NODE_START_TIMEOUT = "timed out during startup"  # what Ray's error says then
# What a call whose worker died, or whose arguments died with a node, raises (ObjectLostError covers
# ObjectReconstructionFailedError and OwnerDiedError; Ray raises them as RayTaskError subclasses too).
LOST = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)


class ClusterUnreachable(ConnectionError):
    """cluster.address names no Ray cluster that answers."""


@contextmanager
def ray_session(cfg: ClusterConfig, run_dir: Path) -> Iterator[None]:
    """Join `cfg.address`, or start a local Ray with cfg.num_cpus / cfg.num_gpus; shut down what we started.
    What the actors print goes to RUN_DIR/workers.log, not to the terminal (which keeps the driver's lines)."""
    if ray.is_initialized():
        yield
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    if cfg.address is not None:
        check_cluster_answers(cfg.address)
        ray.init(address=cfg.address, runtime_env=runtime_env, log_to_driver=True)
    else:
        start_local_node(
            lambda: ray.init(
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=True,
            )
        )
    try:
        with worker_output_to(run_dir / WORKER_LOG):
            if cfg.address is not None:
                _check_pools_fit(cfg)
            yield
    finally:
        ray.shutdown()


def start_local_node(start: Callable[[], object], tries: int = LOCAL_START_TRIES) -> None:
    """Run `start` (a `ray.init` that starts a local Ray), again when Ray's node missed its registration limit
    (30 s, fixed in Ray: a loaded machine can miss it). A failed start leaves its GCS and raylet running, with
    nothing in Ray to stop them: the processes it started are killed before the next try."""
    import psutil

    me = psutil.Process()
    for attempt in range(1, tries + 1):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            start()
            return
        except Exception as err:
            if NODE_START_TIMEOUT not in str(err) or attempt == tries:
                raise
            left = [p for p in me.children(recursive=True) if p.pid not in before]
            for process in left:
                process.kill()
            psutil.wait_procs(left, timeout=10)
            log.warning("local Ray did not start in time (try %d of %d): starting it again", attempt, tries)


@contextmanager
def worker_output_to(path: Path) -> Iterator[None]:
    """Ray relays every actor's stdout and stderr to the driver's terminal, a dying actor's traceback included;
    while this holds, they go to `path` instead, one line each with the actor's name, pid and node. Uses Ray's
    stream dispatcher (not a public API): where it is missing, Ray's relay is left as it is."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        yield
        return
    with open(path, "a", encoding="utf-8", buffering=1) as out:

        def write(batch: dict) -> None:
            who = batch.get("actor_name") or batch.get("task_name") or "ray"
            for line in batch.get("lines", []):
                out.write(f"({who} pid={batch.get('pid')} ip={batch.get('ip')}) {line}\n")

        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("flexgrpo_worker_log", write)
        try:
            yield
        finally:
            dispatcher.remove_handler("flexgrpo_worker_log")


def check_cluster_answers(address: str) -> None:
    """A `host:port` or `ray://host:port` address must accept a connection within a few seconds (ray.init would
    retry for minutes); "auto" and "local" are left to ray.init."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ClusterUnreachable(f"no Ray cluster answers at {address} (cluster.address): {reason}") from None


def _check_pools_fit(cfg: ClusterConfig) -> None:
    available = ray.cluster_resources().get("GPU", 0)
    wanted = sum(p.num_workers * p.gpus_per_worker for p in (cfg.rollout, cfg.reward, cfg.learner))
    if wanted > available:
        raise ConfigError(f"the pools need {wanted:g} GPUs but the Ray cluster at {cfg.address} has {available:g}")


@ray.remote(num_cpus=0)
def _rendezvous_address() -> tuple[str, int]:
    return node_ip(), free_port()


class PoolUnplaced(RuntimeError):
    """The cluster has no room for a pool (or a worker of it) within the time allowed."""


def worker_bundle(pool: PoolConfig) -> dict[str, float]:
    """The resources of one worker of `pool` (a placement-group bundle)."""
    bundle = {"CPU": pool.cpus_per_worker or 0.01}  # a bundle may not be empty
    if pool.gpus_per_worker > 0:
        bundle["GPU"] = pool.gpus_per_worker
    return bundle


def remote_class(cls: type, concurrency_groups: dict[str, int] | None) -> Any:
    """`cls` as a Ray actor class; concurrency_groups: named threads of its own beside the default one."""
    return ray.remote(concurrency_groups=concurrency_groups)(cls) if concurrency_groups else ray.remote(cls)


def actor_options(
    name: str, bundle: dict[str, float], group: PlacementGroup, index: int, max_restarts: int, max_concurrency: int
) -> dict[str, Any]:
    """Ray options of a role actor that takes bundle `index` of placement group `group`."""
    return {
        "name": name,
        "num_cpus": bundle["CPU"],
        "num_gpus": bundle.get("GPU", 0),
        "max_restarts": max_restarts,
        "max_task_retries": 0,
        "max_concurrency": max_concurrency,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(group, index),
    }


class RoleGroup:
    """N actors of one role class, one per bundle of a placement group (a pool).

    The pool is reserved first; `spawn` then starts the actors, so a rendezvous address on the node of bundle 0
    can be handed to them at construction (DeepSpeed's master). The class is a plain Python class; it becomes a
    Ray actor here. Call methods by reference: `[a.sample.remote(g) for a in group.actors]`. With
    max_concurrency > 1 an actor runs that many calls at once in threads (the class must be thread-safe, as
    the reward worker is for swaps during scoring).
    """

    def __init__(self, pool: PoolConfig, *, name: str, wait_s: float = 300) -> None:
        """Reserve the pool; raises PoolUnplaced when the cluster cannot place it within `wait_s`."""
        self.bundle = worker_bundle(pool)
        self.name, self.size = name, pool.num_workers
        self.placement_group = placement_group(
            [dict(self.bundle) for _ in range(pool.num_workers)], strategy="PACK", name=f"{name}-pool"
        )
        if not self.placement_group.wait(wait_s):
            remove_placement_group(self.placement_group)
            raise PoolUnplaced(
                f"the {name} pool ({pool.num_workers} x {self.bundle}) found no room in the cluster within {wait_s:g} s"
            )
        self.actors: list = []

    def rendezvous_address(self) -> tuple[str, int]:
        """(IP, free port) on the node that holds bundle 0."""
        strategy = PlacementGroupSchedulingStrategy(self.placement_group, 0)
        return ray.get(_rendezvous_address.options(scheduling_strategy=strategy).remote())

    def spawn(
        self,
        cls: type,
        *,
        args: tuple = (),
        kwargs_per_rank: list[dict[str, Any]] | None = None,
        max_restarts: int = 0,
        max_concurrency: int = 1,
        concurrency_groups: dict[str, int] | None = None,
    ) -> RoleGroup:
        """Start one actor of `cls` per bundle. concurrency_groups: named threads of their own (Ray concurrency
        groups), for methods called with `.options(concurrency_group=name)` beside the default thread."""
        remote_cls = remote_class(cls, concurrency_groups)
        self.actors = [
            remote_cls.options(
                **actor_options(
                    f"{self.name}-{rank}", self.bundle, self.placement_group, rank, max_restarts, max_concurrency
                )
            ).remote(*args, **(kwargs_per_rank[rank] if kwargs_per_rank else {}))
            for rank in range(self.size)
        ]
        return self

    def __len__(self) -> int:
        return len(self.actors)

    @property
    def actor_names(self) -> list[str]:
        return [f"{self.name}-{rank}" for rank in range(len(self.actors))]

    def kill_actors(self) -> None:
        """End the actors and keep the pool (to spawn them again)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def shutdown(self) -> None:
        self.kill_actors()
        remove_placement_group(self.placement_group)

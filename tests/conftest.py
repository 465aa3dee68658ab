"""Shared fixtures: the tiny recipe, caches inside the repo, one local Ray for the tests that need it."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FLEXGRPO_CACHE", str(REPO / ".cache" / "flexgrpo"))
os.environ.setdefault("RAY_TMPDIR", "/tmp/flexgrpo-ray")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # shared 2-core machines: no pinned threads

from flexgrpo.compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()  # before any model code imports torchvision

from flexgrpo.config import Config, load_config  # noqa: E402


def tiny_config(*overrides: str) -> Config:
    """The default tiny recipe with `key=value` overrides."""
    return load_config(None, list(overrides))


FAMILIES = {  # the tiny model of each policy family, as overrides of the tiny recipe
    "sd3": ("policy.family=sd3", "policy.model=tiny-sd3"),
    "flux": ("policy.family=flux", "policy.model=tiny-flux"),
    "wan": ("policy.family=wan", "policy.model=tiny-wan", "policy.num_frames=5", "policy.height=32", "policy.width=32"),
}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session: 2 CPUs, 3 logical GPUs (one per pool of the tiny recipe)."""
    import ray

    ray.init(num_cpus=2, num_gpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def scored(trajectory, rewards: list[float], reward_version: int = 0):
    """The ScoredGroup a reward worker would return for `trajectory` with these rewards (tests of the learner)."""
    import torch

    from flexgrpo.records import ScoredGroup

    r = torch.tensor(rewards)
    return ScoredGroup(
        trajectory.group_id, trajectory.prompt, trajectory.policy_version, reward_version, r, {"reward": r}
    )


def copy_weights(learner, rollout) -> None:
    """The learner's trained weights into a plain RolloutWorker, as a publish would (no gloo group)."""
    import torch

    with torch.no_grad():
        for name, value in learner.trainable_state().items():
            rollout.params[name].copy_(value)
    rollout.version = learner.version


@contextmanager
def trainer(cfg: Config, run_dir: Path):
    """The real roles of `cfg` on the session's Ray, with a Trainer over an embedded Redis, for tests that
    drive the phases one by one. The roles are shut down afterwards."""
    from cluster.embedded_redis import EmbeddedRedis
    from flexgrpo.config import to_dict
    from flexgrpo.control_plane import ControlPlane
    from orchestration.reporting import MetricsLogger
    from orchestration.roles import build_roles
    from orchestration.trainer import Trainer

    with EmbeddedRedis(run_dir / "redis") as url, MetricsLogger(run_dir, cfg.logging) as logger:
        control = ControlPlane(url, cfg.run.name)
        control.register_run(to_dict(cfg))
        roles = build_roles(cfg, control)
        try:
            yield Trainer(cfg, roles, control, logger, run_dir)
        finally:
            roles.shutdown()


@contextmanager
def alongside(action):
    """Run `action` in a thread while the body runs (a job, usually); re-raise what the action raised."""
    errors: list[BaseException] = []

    def target():
        try:
            action()
        except BaseException as err:  # surfaced after the body
            errors.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    yield
    thread.join()
    if errors:
        raise errors[0]


def wait_for_step(control, step: int, timeout_s: float = 300) -> None:
    """Block until the run registry of `control` says the job finished `step` steps."""
    deadline = time.monotonic() + timeout_s
    while int(control.run_info().get("step", 0)) < step:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not reach step {step} in {timeout_s:.0f} s")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _end_leftover_jobs():
    """A `flexgrpo train` job a failed test left running is ended with it (tests/process_job.py)."""
    yield
    from tests.process_job import Job

    Job.end_leftovers()


# Seconds each of the longest test modules took in `make test` (3 processes on 2 cores, 2026-12-04): the longest
# start first, so that none is left running alone at the end. A module missing here is placed by its marker (slow
# before fast); the figures only order the modules, nothing depends on them being exact.
MODULE_SECONDS = {
    "test_checkpoint_resume_is_exact": 87,
    "test_flexgrpo_eval_compares_a_run_with_its_start_and_any_two_policies": 86,
    "test_full_finetune_run_writes_its_transformer_and_eval_compares_it": 84,
    "test_training_run_end_to_end": 67,
    "test_zero3_full_finetune_workers_equal_learner_after_each_publish": 66,
    "test_a_restarted_reward_worker_or_a_lost_learner_joins_the_run_again": 58,
    "test_dead_workers_are_replaced_and_work_requeued": 56,
    "test_train_failures_end_in_one_line": 51,
    "test_tiny_flex_recipe_runs_from_a_clean_shell": 50,
    "test_restarted_rollout_worker_samples_with_the_latest_weights": 46,
    "test_slow_rollout_worker_never_breaks_the_staleness_bound": 42,
    "test_two_learner_ranks_and_two_samplers_replicas_restores_and_a_dead_rank": 41,
    "test_weight_publish_never_waits_for_a_busy_worker": 41,
    "test_video_run_logs_gifs": 40,
    "test_judge_http_backend_against_vllm_server": 38,
    "test_max_staleness_one_trains_on_data_one_version_old": 33,
    "test_judge_vllm_engine_scores_groups": 31,
    "test_policy_families_onpolicy_ratio": 30,
    "test_reward_scorers_train_and_swap_in": 24,
    "test_a_rendezvous_port_taken_before_the_learner_binds_it_is_replaced": 23,
    "test_operator_commands_hot_swap_and_stop": 22,
    "test_a_learner_rendezvous_port_taken_before_rank_0_binds_it_is_replaced": 19,
}


def pytest_collection_modifyitems(config, items):
    """The longest modules first (`MODULE_SECONDS`), then the other slow ones (`long` tests are slow too), then
    the rest: `make test` hands whole modules to its pytest-xdist processes (--dist loadscope: a module's fixtures
    are built once), each taking the next module when it is free, so the long ones start at once instead of one
    of them running alone at the end while the other processes idle. A slow test that fails is run once more
    (pytest-rerunfailures; the summary counts reruns): these are whole jobs with processes killed on a loaded
    2-core machine, and one timing-dependent failure should not hide the rest of the run. A rerun is still a
    defect to look into: each one CI showed so far was a real race in the job, since fixed."""
    slow = [item for item in items if item.get_closest_marker("slow") or item.get_closest_marker("long")]
    slow_ids = {id(item) for item in slow}

    def order(item) -> tuple[float, bool]:
        return -MODULE_SECONDS.get(item.module.__name__.rsplit(".", 1)[-1], 0), id(item) not in slow_ids

    items.sort(key=order)
    for item in slow:
        if item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=1))

"""cluster.autoscale: the policy grows the pool that holds the learner up and shrinks one that idles, within
min_workers..max_workers, one change at a time with a cooldown; and a real job whose sampling is the bottleneck
(a hold per group) grows its rollout pool into the free GPU of its local Ray."""

import json

import pytest

from flexgrpo.config import ConfigError, load_config
from orchestration.autoscaling import COOLDOWN, PATIENCE, Autoscaler
from tests.process_job import Job, kill_tree, sampled_by, wait_until


def figures(waited=0.0, rollout_idle=0.0, reward_idle=0.0, rollout=(1, 1), reward=(1, 1)) -> dict[str, float]:
    """A step's figures: the share of the step the learner waited for groups, each pool's idle share and
    (live, wanted) workers."""
    out = {"timing/groups": waited, "timing/step": 1.0}
    for pool, idle, (live, wanted) in (("rollout", rollout_idle, rollout), ("reward", reward_idle, reward)):
        out |= {f"{pool}/idle_frac": idle, f"{pool}/workers_live": live, f"{pool}/workers_wanted": wanted}
    return out


def scaler(rollout=(1, 3), reward=(1, 2)) -> Autoscaler:
    return Autoscaler({"rollout": rollout, "reward": reward})


def test_the_busy_pool_grows_while_the_learner_waits_then_cools_down():
    policy = scaler()
    assert policy.decide(figures(waited=0.6, rollout_idle=0.0, reward_idle=0.7)) == {"rollout": 2}
    for _ in range(COOLDOWN):  # a new worker needs time to show in the figures
        assert policy.decide(figures(waited=0.6, rollout=(2, 2), reward_idle=0.7)) == {}
    assert policy.decide(figures(waited=0.6, rollout=(2, 2), reward_idle=0.7)) == {"rollout": 3}
    for _ in range(COOLDOWN):
        policy.decide(figures(waited=0.6, rollout=(3, 3)))
    assert policy.decide(figures(waited=0.6, rollout=(3, 3))) == {}  # at max_workers


def test_no_growth_while_a_requested_worker_still_waits_or_the_learner_is_busy():
    assert scaler().decide(figures(waited=0.6, rollout=(1, 2))) == {}  # rollout-1 still pending on resources
    assert scaler().decide(figures(waited=0.1)) == {}  # the learner hardly waited: not held up
    assert scaler().decide(figures(waited=0.6, rollout_idle=0.3, reward_idle=0.4)) == {}  # neither pool is busy


def test_an_idle_pool_shrinks_after_patience_but_not_below_min():
    policy = scaler(reward=(1, 2))
    idle = figures(reward_idle=0.8, reward=(2, 2))
    for _ in range(PATIENCE - 1):
        assert policy.decide(idle) == {}
    assert policy.decide(idle) == {"reward": 1}
    policy = scaler(reward=(2, 2))
    assert all(policy.decide(idle) == {} for _ in range(3 * PATIENCE))


def test_bounds_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"cluster.rollout: min_workers <= num_workers <= max_workers"):
        load_config(None, ["cluster.rollout.max_workers=0"])
    with pytest.raises(ConfigError, match="cluster.learner: min_workers and max_workers must be null"):
        load_config(None, ["cluster.learner.max_workers=2"])
    assert Autoscaler.from_config(load_config(None, []).cluster) is None  # off by default
    on = load_config(None, ["cluster.autoscale=true", "cluster.rollout.max_workers=4"]).cluster
    assert Autoscaler.from_config(on).bounds == {"rollout": (1, 4), "reward": (1, 1)}


@pytest.mark.long
def test_a_job_held_up_by_sampling_grows_its_rollout_pool(tmp_path):
    """`flexgrpo train` on a local Ray with a fourth (logical) GPU free and a sampling hold of 1 s a group: the
    rollout pool grows to two workers and the new one samples; then the job is stopped."""
    job = Job(
        tmp_path,
        "auto",
        1000,  # stopped once the claim is seen
        "grpo.groups_per_step=2",
        "grpo.max_staleness=1",
        "cluster.num_gpus=4",
        "cluster.autoscale=true",
        "cluster.rollout.max_workers=2",
        "holds.rollout_s=1.0",
    ).start()
    try:
        control = job.wait_for_step(1)
        wait_until("rollout-1 samples", lambda: sampled_by(control).get("rollout-1", 0) >= 1, job, timeout_s=400)
        control.send_command("stop")
        assert job.wait(timeout_s=300) == 0, job.tail()
    finally:
        kill_tree(job.process)
    rows = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(len(rows)))
    assert rows[0]["rollout/workers_wanted"] == 1 and rows[-1]["rollout/workers_wanted"] == 2
    assert "autoscale: rollout 1 -> 2 workers: placed rollout-1" in (job.run_dir / "train.log").read_text()

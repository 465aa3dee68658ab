"""Decoupled PPO keeps stale groups useful. The tiny recipe with Flow-GRPO's clip range (1e-4) and two optimizer
steps per learner step, run synchronously and streaming with max_staleness 2 (seeds fixed): the streaming run's
clip fraction stays within 2x of the synchronous one's, and its reward rises as fast per learner step (a margin
of 20% for the streaming run's timing-dependent step composition). Plain PPO against the behaviour policy would
have clipped most stale terms away: `offpolicy/behaviour_clip_frac` shows how many."""

import json
import statistics

import pytest

from orchestration.driver import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.long
STEPS = 60


def _run(tmp_path, staleness: int) -> list[dict]:
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        f"run.name=stale{staleness}",
        f"run.num_steps={STEPS}",
        "grpo.clip_range=1e-4",
        f"grpo.max_staleness={staleness}",
        "learner.updates_per_step=2",
        "logging.tensorboard=false",
    )
    train(cfg)
    return [json.loads(line) for line in (tmp_path / f"stale{staleness}" / "metrics.jsonl").read_text().splitlines()]


def _reward_slope(rows: list[dict]) -> float:
    """Least-squares slope of the mean reward per learner step."""
    steps, rewards = [r["step"] for r in rows], [r["reward_mean"] for r in rows]
    ms, mr = statistics.mean(steps), statistics.mean(rewards)
    return sum((s - ms) * (r - mr) for s, r in zip(steps, rewards, strict=True)) / sum((s - ms) ** 2 for s in steps)


def test_streaming_with_staleness_two_learns_like_synchronous(ray_local, tmp_path):
    sync, stream = _run(tmp_path, 0), _run(tmp_path, 2)
    assert max(r["offpolicy/staleness_max"] for r in sync) == 0
    assert max(r["offpolicy/staleness_max"] for r in stream) == 2, "the streaming run did train stale groups"

    clip_sync = statistics.mean(r["loss/clip_frac"] for r in sync)
    clip_stream = statistics.mean(r["loss/clip_frac"] for r in stream)
    assert clip_stream <= 2 * clip_sync, (clip_stream, clip_sync)
    behaviour_clip = statistics.mean(r["offpolicy/behaviour_clip_frac"] for r in stream)
    assert behaviour_clip > clip_stream, "against the behaviour policy, plain PPO would clip more"

    slope_sync, slope_stream = _reward_slope(sync), _reward_slope(stream)
    assert slope_sync > 0, "the synchronous run learns"
    assert slope_stream >= 0.8 * slope_sync, (slope_stream, slope_sync)

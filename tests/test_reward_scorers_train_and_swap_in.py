"""The scorers drive training: a learner step trains on PickScore, HPSv2 and the aesthetic predictor together,
then a swap_reward command moves the run to ImageReward and the next step trains on it (one trainer run)."""

from __future__ import annotations

import time

import pytest
import ray

from orchestration.roles import preflight
from tests.conftest import tiny_config, trainer

SCORERS = "[{name: pickscore, model: tiny-pickscore}, {name: hpsv2, model: tiny-hpsv2}, {name: aesthetic, model: tiny-aesthetic}]"  # noqa: E501


def test_a_recipe_naming_the_tiny_scorers_passes_preflight() -> None:
    preflight(tiny_config(f"rewards={SCORERS}"))


@pytest.mark.slow
def test_a_step_trains_on_the_scorers_then_on_image_reward_after_a_swap(ray_local, tmp_path) -> None:
    cfg = tiny_config(
        f"run.output_dir={tmp_path}", "run.name=scorers", "grpo.groups_per_step=1", "grpo.group_size=4",
        f"rewards={SCORERS}",
    )  # fmt: skip
    with trainer(cfg, tmp_path) as t:
        t.restore(None)
        t.pipeline.admit(0)
        (first,) = t.pipeline.take(1, learner_version=0)
        assert first.scored.reward_version == 0
        assert {"pickscore", "hpsv2", "aesthetic"} <= set(first.scored.components)
        for name in ("pickscore", "hpsv2", "aesthetic"):
            assert first.scored.components[name].unique().numel() == 4, f"{name} scores the 4 samples apart"
        t.version = t.train([first]).version
        assert t.version == 1
        t.pipeline.trained([first], step=0)
        t.weights.publish()  # the next group is sampled by version 1 (the staleness bound would drop older ones)
        assert ray.get(t.weights.receiving) == [1]

        command = t.control.send_command(
            "swap_reward", rewards=[{"name": "image_reward", "model": "tiny-image-reward"}]
        )
        deadline = time.monotonic() + 120
        while (outcome := t.control.command_outcome(command)) is None and time.monotonic() < deadline:
            t.operator.poll()
            time.sleep(0.1)
        assert outcome is not None and outcome["status"] == "done", outcome

        t.pipeline.admit(1)
        (second,) = t.pipeline.take(1, learner_version=1)
        assert second.scored.reward_version == 1 and set(second.scored.components) == {"image_reward"}
        assert second.scored.components["image_reward"].unique().numel() == 4
        assert t.train([second]).version == 2

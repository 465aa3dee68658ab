"""A Flex judge's win rate against the start per category, under the judge's own category names: in the in-loop
figures (`<name>/category/<category>/win_rate_vs_start`) and in `flexgrpo eval`'s eval.json and table; a category
no reply named has no figure. The replies come from a judge that reads the pixels (brighter wins overall and in
A, darker wins in B, C never named), parsed by the real Flex parsers of both protocols."""

import json

import pytest
import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from orchestration.eval_run import markdown, summarize
from orchestration.evaluation import versus_start_metrics
from reward_workers.backends import Generation, JudgeRequest
from reward_workers.judge_prompts import category_names
from reward_workers.judges import FLEX, PairwiseJudge
from reward_workers.versus_start import score_versus_start

A, B, C = category_names(video=False)  # "A. Semantic Alignment & Accuracy", ...


class PixelJudge:
    """A Flex judge that answers from the two images it is shown: the brighter one wins overall and in category
    A, the darker one in category B; category C is never named."""

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        replies = []
        for request in requests:
            first, second = (float(image.mean()) for image in request.images)
            brighter, darker = ("Image 1", "Image 2") if first > second else ("Image 2", "Image 1")
            categories = [{"name": A, "cat_winner": brighter}, {"name": B, "cat_winner": darker}]
            replies.append(json.dumps({"categories": categories, "winner": brighter}))
        return replies

    def close(self) -> None:
        pass


def _groups(level: int) -> list[MediaGroup]:
    return [
        MediaGroup(f"eval-{i}", "a cat", 1, torch.full((2, 16, 16, 3), level + i, dtype=torch.uint8)) for i in range(3)
    ]


@pytest.mark.parametrize("protocol", ["robust", "official"])
def test_flex_categories_are_scored_against_the_start_under_their_names(protocol):
    spec = RewardSpec(name="unifiedreward_flex", model="judge", protocol=protocol)
    judge = PairwiseJudge(PixelJudge(), spec, FLEX)
    results = score_versus_start(spec, judge, True, _groups(200), _groups(50))  # candidates brighter
    assert set(results[0].candidate) == {"", "category", f"category/{A}", f"category/{B}"}
    assert results[0].candidate[f"category/{A}"].tolist() == [1.0, 1.0]

    m = versus_start_metrics(results)
    assert m["unifiedreward_flex/win_rate_vs_start"] == 1.0
    assert m[f"unifiedreward_flex/category/{A}/win_rate_vs_start"] == 1.0
    assert m[f"unifiedreward_flex/category/{B}/win_rate_vs_start"] == 0.0
    assert not any(C in key for key in m)  # never named: no figure, not a tie

    report = summarize(results, {g.group_id: "animals" for g in _groups(0)}, {"sampler": {}})
    entry = report["rewards"]["unifiedreward_flex"]
    assert set(entry["categories"]) == {A, B}
    assert entry["categories"][A] == {"win_rate": 1.0, "ci95": [1.0, 1.0], "n": 3}
    assert entry["categories"][B]["win_rate"] == 0.0 and entry["per_tag"]["animals"]["categories"][B]["n"] == 3
    assert f"| unifiedreward_flex ({B}) | all | 3 | 0.000 |" in markdown(report)


def test_a_policy_against_itself_ties_in_every_category():
    spec = RewardSpec(name="unifiedreward_flex", model="judge")
    same = score_versus_start(spec, PairwiseJudge(PixelJudge(), spec, FLEX), True, _groups(90), _groups(90))
    m = versus_start_metrics(same)
    assert m["unifiedreward_flex/win_rate_vs_start"] == 0.5  # each order won by the sample shown second
    assert m[f"unifiedreward_flex/category/{A}/win_rate_vs_start"] == 0.5
    assert m[f"unifiedreward_flex/category/{B}/win_rate_vs_start"] == 0.5

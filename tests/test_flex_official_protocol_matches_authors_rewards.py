"""protocol: official gives the authors' Flex rewards on the same replies, to 1e-6; robust reads more of them.

The replies are a hand-written corpus in the model's format (clean, fenced, truncated, category D, the
template's literal "Image 1/2", missing winner, both named, renamed categories, garbage). The expected numbers
are what the authors' reward code (Pref-GRPO `fastvideo/rewards/unifiedreward_flex.py`, `_pairwise_win_rate`
with OVERALL_WEIGHT 0.3, DIM_WEIGHT 0.7, CATEGORY_WEIGHTS 1.0,0.7,0.7 for images and 1,1,1 for videos) returns
for these replies, run once outside this repository and written down here.
"""

from __future__ import annotations

import json

import pytest
import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.backends import Generation, JudgeRequest
from reward_workers.judge_parse import official_winner, parse_flex_official
from reward_workers.judges import FLEX, PairwiseJudge
from reward_workers.winrate import Comparison, flex_rewards, judge_pairs

A, B, C = "A. Semantic Alignment & Accuracy", "B. Image Quality & Realism", "C. Aesthetics & Artistry"


def reply(winner: object, cats: list[tuple[str, str]], **extra: object) -> str:
    """A Flex reply as the model lays it out (indented JSON), with dims elided to one per category."""
    categories = [
        {
            "name": name,
            "dims": [{"name": "d", "reason_1": "r", "reason_2": "r", "score_1": 6, "score_2": 4}],
            "cat_reason": "because",
            "cat_winner": cat_winner,
        }
        for name, cat_winner in cats
    ]
    body = {"prompt": "a red cat", "categories": categories, "reason": "overall", **extra}
    if winner is not None:
        body["winner"] = winner
    return json.dumps(body, indent=2)


CLEAN = reply("Image 1", [(A, "Image 1"), (B, "Image 2"), (C, "Image 1")])
FENCED = "Here it is.\n```json\n" + reply("Image 2", [(A, "Image 2"), (B, "Image 2"), (C, "Image 1")]) + "\n```"
TRUNCATED = reply("Image 1", [(A, "Image 1"), (B, "Image 1"), (C, "Image 1")])[:-2]  # the closing brace cut
WITH_D = reply("Image 2", [(A, "Image 1"), (B, "Image 2"), (C, "Image 2"), ("D. Text rendering", "Image 1")])
LITERAL_1_2 = reply("Image 1/2", [(A, "Image 1/2"), (B, "Image 2"), (C, "Image 1")])
MISSING_WINNER = reply(None, [(A, "Image 2"), (B, "Image 1"), (C, "Image 2")])
BOTH_NAMED = reply("Image 2 is better than Image 1", [(A, "Image 1"), (B, "image 2"), (C, "Image 1 and Image 2")])
RENAMED = reply("image2", [("Semantic Alignment & Accuracy", "Image 2"), (B, "Video 2"), (C, "Image 2")])
GARBAGE = "I cannot compare these images."

# G = 4, pairs in the authors' order (itertools.combinations): sample 3 only meets unreadable replies
IMAGE_CORPUS = {
    (0, 1): CLEAN,
    (0, 2): FENCED,
    (0, 3): TRUNCATED,
    (1, 2): WITH_D,
    (1, 3): GARBAGE,
    (2, 3): "",
}
# the authors' returns for IMAGE_CORPUS: rewards, overall_reward, dim_mean_reward
AUTHORS_IMAGE = {
    "rewards": [0.5, 0.2979, 0.7021, 0.5],
    "overall": [0.5, 0.167, 0.833, 0.5],
    "category": [0.5, 0.354, 0.646, 0.0],
}
# G = 3 videos: literal "Image 1/2", missing winner, both named, a renamed category (a 4th key, weight 1.0)
VIDEO_CORPUS = {(0, 1): LITERAL_1_2, (0, 2): MISSING_WINNER, (1, 2): BOTH_NAMED}
VIDEO_CORPUS_RENAMED = {(0, 1): LITERAL_1_2, (0, 2): RENAMED, (1, 2): BOTH_NAMED}
AUTHORS_VIDEO = {"rewards": [0.575, 0.3669, 0.5581], "overall": [0.75, 0.25, 0.5], "category": [0.5, 0.417, 0.583]}
AUTHORS_VIDEO_RENAMED = {
    "rewards": [0.4125, 0.3669, 0.7066],
    "overall": [0.5, 0.25, 0.75],
    "category": [0.375, 0.417, 0.688],
}


def comparisons(corpus: dict[tuple[int, int], str], parse=parse_flex_official) -> list[Comparison]:
    return [Comparison(i, j, parse(text)) for (i, j), text in corpus.items()]


@pytest.mark.parametrize(
    ("corpus", "group_size", "video", "expected"),
    [
        (IMAGE_CORPUS, 4, False, AUTHORS_IMAGE),
        (VIDEO_CORPUS, 3, True, AUTHORS_VIDEO),
        (VIDEO_CORPUS_RENAMED, 3, True, AUTHORS_VIDEO_RENAMED),
    ],
)
def test_official_rewards_equal_the_authors(corpus, group_size, video, expected) -> None:
    rates = flex_rewards(group_size, comparisons(corpus), video=video, official=True)
    torch.testing.assert_close(rates.rewards, torch.tensor(expected["rewards"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rates.overall, torch.tensor(expected["overall"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rates.category, torch.tensor(expected["category"]), atol=1e-6, rtol=0)


def test_official_reading_of_each_reply() -> None:
    corpus = {name: text for name, text in globals().items() if name.isupper() and isinstance(text, str)}
    read = {name: parse_flex_official(text) for name, text in corpus.items()}
    assert (read["CLEAN"].parsed, read["CLEAN"].winner) == (True, 0)
    assert read["CLEAN"].categories == ((A, 0), (B, 1), (C, 0))
    assert (read["FENCED"].parsed, read["FENCED"].winner) == (True, 1)  # the outermost {...} of the text
    assert not read["TRUNCATED"].parsed and not read["GARBAGE"].parsed  # no repair: a tie, no categories
    assert [k for k, _ in read["WITH_D"].categories] == [A, B, C]  # only the first three categories count
    assert read["LITERAL_1_2"].winner == 0  # "image 1/2" names image 1 only, to the authors' regex
    assert read["MISSING_WINNER"].parsed and read["MISSING_WINNER"].winner is None  # a tie with categories
    assert read["BOTH_NAMED"].winner is None and read["BOTH_NAMED"].categories[2] == (C, None)
    assert read["RENAMED"].winner == 1 and read["RENAMED"].categories[0][0] == "Semantic Alignment & Accuracy"
    winners = [official_winner(v) for v in (1, None, "Video 2", "IMAGE1", "image 10", "left")]
    assert winners == [None, None, 1, 0, None, None]
    assert not parse_flex_official("[1, 2]").parsed and not parse_flex_official("{}").parsed


def test_a_sample_without_category_evidence_falls_back_to_its_overall_win_rate() -> None:
    rates = flex_rewards(4, comparisons(IMAGE_CORPUS), video=False, official=True)
    assert rates.evidence.tolist() == [True, True, True, False]
    assert rates.rewards[3].item() == pytest.approx(rates.overall[3].item())  # 0.5, not a mix with 0


def test_robust_reads_what_official_counts_as_ties() -> None:
    from reward_workers.judge_parse import parse_flex_reply

    official = flex_rewards(4, comparisons(IMAGE_CORPUS), video=False, official=True)
    robust = flex_rewards(4, comparisons(IMAGE_CORPUS, parse_flex_reply), video=False, official=False)
    assert parse_flex_reply(TRUNCATED).parsed and parse_flex_reply(TRUNCATED).winner == 0  # repaired
    assert robust.evidence[3] and not official.evidence[3]
    assert robust.overall[3] < official.overall[3]  # sample 3 loses the truncated reply, no longer a tie


class CorpusBackend:
    """Replies from the corpus, found by the pair of images in each request."""

    retry_delay_s = 0.0

    def __init__(self, group: MediaGroup, corpus: dict[tuple[int, int], str]) -> None:
        self.by_images = {
            (group.media[i].numpy().tobytes(), group.media[j].numpy().tobytes()): text
            for (i, j), text in corpus.items()
        }

    def generate(self, requests: list[JudgeRequest], generation: Generation) -> list[str | None]:
        return [self.by_images[tuple(image.tobytes() for image in r.images)] for r in requests]  # type: ignore[index]

    def close(self) -> None:
        pass


def test_judge_end_to_end_gives_the_authors_rewards_and_position_counts() -> None:
    media = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    group = MediaGroup(group_id="g", prompt="a red cat", policy_version=0, media=media)
    assert judge_pairs(4) == list(IMAGE_CORPUS)
    spec = RewardSpec(name="unifiedreward_flex", model="judge", max_retries=0)
    out = PairwiseJudge(CorpusBackend(group, IMAGE_CORPUS), spec, FLEX).score(group)
    torch.testing.assert_close(out.rewards, torch.tensor(AUTHORS_IMAGE["rewards"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.components["category"], torch.tensor(AUTHORS_IMAGE["category"]), atol=1e-6, rtol=0)
    assert out.components["category_mask"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert out.unparsed == 3  # truncated, garbage, empty
    assert (out.first_position_wins, out.position_decided) == (1, 3)  # CLEAN; FENCED and WITH_D pick Image 2

"""Judge replies are read leniently, and no reply (malformed, truncated, hostile) makes a parser raise."""

from __future__ import annotations

import json
import random
import time

import pytest

from reward_workers.judge_parse import (
    PairVerdict,
    PointVerdict,
    extract_json_object,
    parse_flex_reply,
    parse_pointwise_reply,
    parse_think_reply,
    winner_index,
)

FLEX_REPLY = json.dumps(
    {
        "prompt": "a red cat on a blue car",
        "categories": [
            {
                "name": "A. Semantic Alignment & Accuracy",
                "dims": [{"name": "color", "reason_1": "red", "reason_2": "pink", "score_1": 7, "score_2": 3}],
                "cat_reason": "1 follows the prompt",
                "cat_winner": "Image 1",
            },
            {
                "name": "B. Image Quality & Realism",
                "dims": [],
                "cat_reason": "sharper",
                "cat_winner": "Image 2",
            },
            {"name": "C. Aesthetics & Artistry", "dims": [], "cat_reason": "nicer", "cat_winner": "Image 1"},
        ],
        "reason": "Image 1 is better overall",
        "winner": "Image 1",
    }
)
THINK_REPLY = "<think>The cat in the second image is red; the first is pink.</think><answer>Image 2 is better</answer>"
POINT_REPLY = "Alignment Score (1-5): 4\nCoherence Score (1-5): 2\nStyle Score (1-5): 5"
DIMS = ("alignment", "coherence", "style")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Image 1", 0), ("image_2", 1), ("Video 2", 1), ("IMAGE-1", 0), (1, 0), (2, 1), ("2", 1),
        (" '1' ", 0), ("Image 2 is better than Image 1", 1), ("first", 0), ("Second one", 1), ("tie", None),
        ("both are equal", None), ("Image 3", None), (3, None), (True, None), (None, None), ([1], None),
        (1.5, None), ("", None),
    ],
)  # fmt: skip
def test_winner_spellings(value: object, expected: int | None) -> None:
    assert winner_index(value) == expected


def test_flex_reply_in_prose_fences_and_any_case() -> None:
    plain = parse_flex_reply(FLEX_REPLY)
    assert plain.parsed and plain.winner == 0 and dict(plain.categories) == {"A": 0, "B": 1, "C": 0}
    assert plain.details["prompt"] == "a red cat on a blue car"
    for wrapped in (
        f"Sure! Here is my judgement:\n```json\n{FLEX_REPLY}\n```\nHope it helps.",
        f"My verdict {{see below}}: {FLEX_REPLY} -- done",
        FLEX_REPLY.replace('"winner"', '"Winner"').replace('"categories"', '"CATEGORIES"'),
    ):
        verdict = parse_flex_reply(wrapped)
        assert (verdict.parsed, verdict.winner, dict(verdict.categories)) == (True, 0, {"A": 0, "B": 1, "C": 0})


def test_flex_categories_by_name_keyword_or_dimension_scores() -> None:
    reply = {
        "categories": {
            "Aesthetics": {"cat_winner": "Image 2"},
            "semantic alignment": "Image 1",
            "Realism": {"dims": [{"score_1": 3, "score_2": 7}, {"score_1": 4, "score_2": 6}]},
            "D. Text rendering": {"cat_winner": "tie"},
        },
        "winner": 2,
    }
    verdict = parse_flex_reply(json.dumps(reply))
    assert verdict.parsed and verdict.winner == 1
    assert verdict.categories == (("C", 1), ("A", 0), ("B", 1), ("D", None))  # in reply order


def test_flex_truncated_reply_keeps_what_is_complete() -> None:
    reordered = json.loads(FLEX_REPLY)
    reordered = {"winner": reordered.pop("winner"), **reordered}  # winner first, then the long part
    text = json.dumps(reordered)
    cut = text[: text.index("B. Image Quality") + 5]
    verdict = parse_flex_reply(cut)
    assert verdict.parsed and verdict.winner == 0 and verdict.categories == (("A", 0),)
    # cut before the winner: nothing to score with, a counted tie
    assert not parse_flex_reply(FLEX_REPLY[: FLEX_REPLY.index('"winner"')]).parsed


def test_flex_without_winner_or_json_is_unparsed() -> None:
    for text in (
        "Image 1 is better",
        '{"reason": "no verdict"}',
        "{",
        "",
        "```json\n```",
        '{"winner": "Image 9"}',
    ):
        verdict = parse_flex_reply(text)
        assert not verdict.parsed and verdict.winner is None
    tie = parse_flex_reply('{"winner": "Tie"}')
    assert tie.parsed and tie.winner is None


def test_think_reply_forms() -> None:
    assert parse_think_reply(THINK_REPLY).winner == 1
    assert parse_think_reply(THINK_REPLY).details["think"].startswith("The cat")
    assert parse_think_reply("<think>hm</think> Image 1 is better.").winner == 0  # no answer tags
    assert parse_think_reply("<think>hm</think><answer>Image 2 is bet").winner == 1  # truncated answer
    tie = parse_think_reply("<answer>Both are equally good</answer>")
    assert tie.parsed and tie.winner is None
    for text in ("<think>Image 1 looks great but I ran out of tokens", "", "<answer></answer>", "Image"):
        assert not parse_think_reply(text).parsed


def test_pointwise_reply_forms() -> None:
    assert parse_pointwise_reply(POINT_REPLY, DIMS).scores == {"alignment": 4, "coherence": 2, "style": 5}
    markdown = "**Alignment Score (1-5):** 5\n**Coherence score**: 9\nstyle: 0.5"
    assert parse_pointwise_reply(markdown, DIMS).scores == {
        "alignment": 5,
        "coherence": 5,
        "style": 1,
    }  # clamped
    partial = parse_pointwise_reply("Alignment Score (1-5): 3\nCoherence Sc", DIMS)
    assert partial.parsed and partial.scores == {"alignment": 3}
    assert parse_pointwise_reply("Physics Score (1-5): 4", DIMS) == PointVerdict()  # not a dimension asked for
    assert not parse_pointwise_reply("great image, 10/10", DIMS).parsed


def _mutations(rng: random.Random, seed_texts: list[str]) -> list[object]:
    """Hostile replies: truncations, byte noise, swapped quotes, deep nesting, huge and non-string replies."""
    alphabet = '{}[]",:\\ \n\t`<>/abcdeImage12_-\x00\ud800é🐈'
    out: list[object] = [
        None, 7, 3.5, b'{"winner": "Image 1"}', {"winner": "Image 1"}, ["Image 1"], object(),
        "[" * 100_000, "{" * 100_000, '{"a":' * 30_000, "```" * 10_000, "<answer>" * 10_000,
        '{"winner": "Image 1"' + ", " * 100_000, "x" * 1_000_000, '{"categories": ' + "[" * 5000,
        '{"winner": NaN, "categories": Infinity}', '{"winner": "Image 1", "categories": [null, 1, "A", []]}',
        '{"winner": {"name": "Image 1"}}', '{"winner": ["Image 1"]}', "\ufeff" + FLEX_REPLY, FLEX_REPLY * 3,
    ]  # fmt: skip
    for _ in range(3000):
        text = rng.choice(seed_texts)
        kind = rng.randrange(5)
        if kind == 0:
            text = text[: rng.randrange(len(text) + 1)]
        elif kind == 1:
            chars = list(text)
            for _ in range(rng.randrange(1, 12)):
                chars.insert(rng.randrange(len(chars) + 1), rng.choice(alphabet))
            text = "".join(chars)
        elif kind == 2:
            text = text.replace('"', rng.choice(["'", "", '""', "`"]))
        elif kind == 3:
            start = rng.randrange(len(text))
            text = text[:start] + text[start + rng.randrange(1, 40) :]
        else:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(200)))
        out.append(text)
    return out


def test_fuzzed_replies_never_raise_and_count_as_ties() -> None:
    rng = random.Random(0)
    replies = _mutations(rng, [FLEX_REPLY, THINK_REPLY, POINT_REPLY])
    start = time.perf_counter()
    unparsed = 0
    for reply in replies:
        for parse in (parse_flex_reply, parse_think_reply):
            verdict = parse(reply)
            assert isinstance(verdict, PairVerdict)
            assert verdict.winner in (0, 1, None)
            assert {k for k, _ in verdict.categories} <= {"A", "B", "C", "D"}
            assert all(w in (0, 1, None) for _, w in verdict.categories)
            json.dumps(verdict.details)  # the details go to the logs as JSON
            unparsed += not verdict.parsed
            if not verdict.parsed:
                assert verdict.winner is None and not verdict.categories
        point = parse_pointwise_reply(reply, DIMS)
        assert all(1 <= s <= 5 for s in point.scores.values()) and point.parsed == bool(point.scores)
        if isinstance(reply, str):
            assert isinstance(extract_json_object(reply), dict | None)
    elapsed = time.perf_counter() - start
    assert unparsed > 0  # the fuzz does reach the tie path
    assert elapsed < 60, f"parsing {len(replies)} hostile replies took {elapsed:.1f} s"


def test_every_truncation_of_a_reply_is_a_tie_or_the_right_winner() -> None:
    for cut in range(len(FLEX_REPLY) + 1):
        verdict = parse_flex_reply(FLEX_REPLY[:cut])
        assert verdict.winner == (0 if verdict.parsed else None)
    for cut in range(len(THINK_REPLY) + 1):
        verdict = parse_think_reply(THINK_REPLY[:cut])
        assert verdict.winner == (1 if verdict.parsed else None)

"""VLM judges as reward models: UnifiedReward-Flex and -Think (pairwise) and UnifiedReward-2.0 (pointwise).

Scoring groups (`score_many`; `score` is one group): (1) build every request of every group (pairs from
`judge_pairs`, or one per sample), each the media first and then the authors' template, (2) send them to the
backend as one batch, (3) parse the replies, (4) send what failed or did not parse again, up to `max_retries`
times, (5) turn each group's verdicts into rewards; what never parsed is a tie, counted in `unparsed`.
`spec.protocol` picks the reading of replies: official (the authors' parse and reward rule) or robust.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from flexgrpo.config import MAX_JUDGE_RETRIES, RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.backends import Generation, JudgeBackend, JudgeRequest
from reward_workers.base import RewardOutput
from reward_workers.judge_parse import (
    PairVerdict,
    PointVerdict,
    parse_flex_official,
    parse_flex_reply,
    parse_pointwise_official,
    parse_pointwise_reply,
    parse_think_official,
    parse_think_reply,
)
from reward_workers.judge_prompts import (
    POINTWISE_DIMENSIONS,
    category_names,
    flex_reply_schema,
    pointwise_reply_regex,
    render,
    think_reply_regex,
)
from reward_workers.winrate import ROBUST_LETTERS, Comparison, flex_rewards, judge_pairs, win_rates

log = logging.getLogger(__name__)
RETRY_TEMPERATURE = 0.7  # greedy retries sample, so a garbled greedy reply is not simply repeated


def sample_frames(media: torch.Tensor, num_frames: int) -> list[list[np.ndarray]]:
    """Per sample, the images a judge sees: the image itself, or min(`num_frames`, F) video frames at
    linspace(0, F - 1) truncated to integers (the authors' frame choice).

    media: [G, H, W, 3] or [G, F, H, W, 3] uint8. Returns G lists of uint8 [H, W, 3] arrays.
    """
    array = media.numpy()
    if media.dim() == 4:
        return [[image] for image in array]
    frames = array.shape[1]
    index = np.linspace(0, frames - 1, min(num_frames, frames)).astype(int)
    return [list(video[index]) for video in array]


def ask(
    backend: JudgeBackend,
    requests: list[JudgeRequest],
    generation: Generation,
    parse: Callable[[str | None], PairVerdict | PointVerdict],
    max_retries: int,
) -> tuple[list, list[int]]:
    """Send `requests` as one batch; re-send what failed or did not parse (at most `max_retries` times).

    Returns the last verdict of each request and how many times each was sent. Never raises.
    """
    verdicts = [parse(None) for _ in requests]
    attempts = [0] * len(requests)
    pending = list(range(len(requests)))
    for attempt in range(max_retries + 1):
        if not pending:
            break
        replies = _generate(backend, [_reseeded(requests[i], attempt) for i in pending], generation)
        failed = []
        for i, reply in zip(pending, replies, strict=True):
            attempts[i] += 1
            verdicts[i] = parse(reply)
            if not verdicts[i].parsed:
                failed.append((i, reply is None))
        pending = [i for i, _ in failed]
        if generation.temperature is not None:
            generation = replace(generation, temperature=max(generation.temperature, RETRY_TEMPERATURE))
        if any(transport for _, transport in failed) and attempt < max_retries:
            time.sleep(backend.retry_delay_s * 2**attempt)  # back off a struggling server
    return verdicts, attempts


def request_seeds(judge: str, group_id: str, count: int) -> list[int]:
    """The sampling seeds of a group's `count` requests to `judge`: a function of the three alone, so a group
    judged again (a resume, a restarted reward worker) samples the same replies, in any batch."""
    digest = hashlib.blake2b(f"{judge}/{group_id}".encode(), digest_size=8).digest()
    first = int.from_bytes(digest, "little") >> 33  # 31 bits; a request's retries add up to 255 to its seed
    return [first + index * (MAX_JUDGE_RETRIES + 1) for index in range(count)]


def _reseeded(request: JudgeRequest, attempt: int) -> JudgeRequest:
    """A retry samples anew: the seed moves by the attempt (at most MAX_JUDGE_RETRIES)."""
    return request if request.seed is None or not attempt else replace(request, seed=request.seed + attempt)


def _generate(backend: JudgeBackend, requests: list[JudgeRequest], generation: Generation) -> list:
    try:
        replies = list(backend.generate(requests, generation))
    except Exception:  # backends should not raise; a broken one still must not stop the run
        log.exception("judge backend raised on %d requests", len(requests))
        return [None] * len(requests)
    if len(replies) != len(requests):
        log.error("judge backend returned %d replies for %d requests", len(replies), len(requests))
        return [None] * len(requests)
    return replies


def _by_modality(groups: list[MediaGroup]) -> list[list[int]]:
    """Indices of the image groups and of the video groups (one batch each: their generations differ)."""
    return [idx for video in (False, True) if (idx := [i for i, g in enumerate(groups) if g.is_video == video])]


def _generation(spec: RewardSpec, constraint: dict) -> Generation:
    return Generation(
        max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, thinking=spec.thinking, **constraint
    )


# [G] rewards, [G] components by suffix, [G] win rates by category name (Flex), log entry
Rewards = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict]


@dataclass(frozen=True)
class PairwiseFormat:
    """What makes a pairwise judge Flex or Think: its template, reply shape, parsers and reward."""

    template: str  # judge_prompts template name
    constraint: Callable[[bool, int | None], dict]  # (video, text_chars) -> Generation kwargs (json_schema or regex)
    parse: Callable[[object, bool, bool], PairVerdict]  # (reply, video, official)
    rewards: Callable[[int, list[Comparison], bool, bool], Rewards]  # (G, comparisons, video, official)


def _flex_parse(reply: object, video: bool, official: bool) -> PairVerdict:
    return parse_flex_official(reply) if official else parse_flex_reply(reply)


def _flex_rewards(group_size: int, comparisons: list[Comparison], video: bool, official: bool) -> Rewards:
    rates = flex_rewards(group_size, comparisons, video=video, official=official)
    components = {"overall": rates.overall, "category": rates.category, "category_mask": rates.evidence.float()}
    entry = {"overall": rates.overall.tolist(), "category": rates.category.tolist()}
    entry |= {"evidence": rates.evidence.tolist()} | {k: r.tolist() for k, r in rates.per_category.items()}
    names = {} if official else dict(zip(ROBUST_LETTERS, category_names(video), strict=True))  # A -> "A. Semantic..."
    return rates.rewards, components, {names.get(k, k): r for k, r in rates.per_category.items()}, entry


def _think_parse(reply: object, video: bool, official: bool) -> PairVerdict:
    return parse_think_official(reply, video) if official else parse_think_reply(reply)


def _think_rewards(group_size: int, comparisons: list[Comparison], video: bool, official: bool) -> Rewards:
    rates = win_rates(group_size, comparisons, rounded=official)  # [G]
    return rates, {}, {}, {"overall": rates.tolist()}


FLEX = PairwiseFormat(
    template="flex",
    constraint=lambda video, chars: {"json_schema": flex_reply_schema(video, chars)},
    parse=_flex_parse,
    rewards=_flex_rewards,
)
THINK = PairwiseFormat(
    template="think",
    constraint=lambda video, chars: {"regex": think_reply_regex(video, chars)},
    parse=_think_parse,
    rewards=_think_rewards,
)


class PairwiseJudge:
    """Rewards from pairwise judgements: per-sample win rates in the group (Flex: mixed with categories)."""

    def __init__(self, backend: JudgeBackend, spec: RewardSpec, reply_format: PairwiseFormat) -> None:
        self.backend, self.spec, self.format = backend, spec, reply_format
        self.official = spec.protocol == "official"

    def requests(self, group: MediaGroup) -> tuple[list[tuple[int, int]], list[JudgeRequest]]:
        """The pairs to judge and their requests: the first sample's images, the second's, then the text."""
        frames = sample_frames(group.media, self.spec.video_frames)
        text = render(self.format.template, group.is_video, group.prompt)
        pairs = judge_pairs(len(frames), self.spec.pairs_per_sample, self.spec.both_orders)
        seeds = request_seeds(self.spec.name, group.group_id, len(pairs))
        seeded_pairs = zip(pairs, seeds, strict=True)
        return pairs, [JudgeRequest((*frames[i], *frames[j], text), seed) for (i, j), seed in seeded_pairs]

    def score(self, group: MediaGroup) -> RewardOutput:
        return self.score_many([group])[0]

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        """Score several groups with one batch of requests per modality; one output per group, in order."""
        outputs: list[RewardOutput | None] = [None] * len(groups)
        for indices in _by_modality(groups):
            video = groups[indices[0]].is_video
            built = [self.requests(groups[i]) for i in indices]
            requests = [r for _, group_requests in built for r in group_requests]
            parse = partial(self.format.parse, video=video, official=self.official)
            verdicts, attempts = ask(self.backend, requests, self._generation(video), parse, self.spec.max_retries)
            start = 0
            for i, (pairs, _) in zip(indices, built, strict=True):
                end = start + len(pairs)
                outputs[i] = self._output(groups[i], pairs, verdicts[start:end], attempts[start:end])
                start = end
        return outputs  # type: ignore[return-value]

    def _output(
        self, group: MediaGroup, pairs: list[tuple[int, int]], verdicts: list[PairVerdict], attempts: list[int]
    ) -> RewardOutput:
        comparisons = [Comparison(i, j, v) for (i, j), v in zip(pairs, verdicts, strict=True)]
        rewards, components, categories, rates = self.format.rewards(
            group.media.shape[0], comparisons, group.is_video, self.official
        )
        details = [_pair_details(c, n) for c, n in zip(comparisons, attempts, strict=True)]
        details.append({"kind": "win_rates", "protocol": self.spec.protocol} | rates)
        decided = [v.winner for v in verdicts if v.winner is not None]
        return RewardOutput(
            rewards=rewards,
            details=details,
            unparsed=sum(not v.parsed for v in verdicts),
            requests=sum(attempts),
            components=components,
            categories=categories,
            first_position_wins=decided.count(0),
            position_decided=len(decided),
        )

    def _generation(self, video: bool) -> Generation:
        constraint = {}
        if self.spec.structured_output:
            constraint = self.format.constraint(video, self.spec.structured_text_chars)
        return _generation(self.spec, constraint)

    def close(self) -> None:
        self.backend.close()


def _pair_details(c: Comparison, attempts: int) -> dict:
    """A judgement for the logs, with winners named by sample index (None: tie)."""
    sides = (c.first, c.second)
    pick = lambda w: None if w is None else sides[w]  # noqa: E731
    return {
        "kind": "pair",
        "pair": [c.first, c.second],
        "parsed": c.verdict.parsed,
        "attempts": attempts,
        "winner": pick(c.verdict.winner),
        "categories": {k: pick(w) for k, w in c.verdict.categories},
        "reply": c.verdict.details,
    }


class PointwiseJudge:
    """UnifiedReward-2.0: each sample scored alone on 1-5 scales; reward = mean of (score - 1) / 4.

    A dimension the reply does not give: official, the mean of that dimension over the group's samples that
    have it (the authors' fill), else a tie; robust, a tie (0.5). An unreadable reply is 0.5 overall.
    """

    def __init__(self, backend: JudgeBackend, spec: RewardSpec) -> None:
        self.backend, self.spec = backend, spec
        self.official = spec.protocol == "official"

    def score(self, group: MediaGroup) -> RewardOutput:
        return self.score_many([group])[0]

    def score_many(self, groups: list[MediaGroup]) -> list[RewardOutput]:
        """Score several groups with one batch of requests per modality; one output per group, in order."""
        outputs: list[RewardOutput | None] = [None] * len(groups)
        for indices in _by_modality(groups):
            video = groups[indices[0]].is_video
            dims = POINTWISE_DIMENSIONS[video]
            requests = [
                JudgeRequest((*sample, render("pointwise", video, groups[i].prompt)), seed)
                for i in indices
                for sample, seed in zip(
                    sample_frames(groups[i].media, self.spec.video_frames),
                    request_seeds(self.spec.name, groups[i].group_id, groups[i].media.shape[0]),
                    strict=True,
                )
            ]
            regex = {"regex": pointwise_reply_regex(video)} if self.spec.structured_output else {}
            reader = parse_pointwise_official if self.official else parse_pointwise_reply
            parse = partial(reader, dimensions=dims)
            verdicts, attempts = ask(
                self.backend, requests, _generation(self.spec, regex), parse, self.spec.max_retries
            )
            start = 0
            for i in indices:
                end = start + groups[i].media.shape[0]
                outputs[i] = self._output(dims, verdicts[start:end], attempts[start:end])
                start = end
        return outputs  # type: ignore[return-value]

    def _output(self, dims: tuple[str, ...], verdicts: list[PointVerdict], attempts: list[int]) -> RewardOutput:
        fill = {d: 3.0 for d in dims}  # a tie: (3 - 1) / 4 = 0.5
        if self.official:
            given = {d: [v.scores[d] for v in verdicts if d in v.scores] for d in dims}
            fill |= {d: float(np.mean(values)) for d, values in given.items() if values}
        rewards = torch.tensor(
            [
                np.mean([(v.scores.get(d, fill[d]) - 1) / 4 for d in dims]) if v.parsed or self.official else 0.5
                for v in verdicts
            ],
            dtype=torch.float32,
        )  # [G]
        details = [
            {"kind": "sample", "sample": i, "parsed": v.parsed, "attempts": n, "scores": v.scores}
            for i, (v, n) in enumerate(zip(verdicts, attempts, strict=True))
        ]
        unparsed = sum(not v.parsed for v in verdicts)
        return RewardOutput(rewards=rewards, details=details, unparsed=unparsed, requests=sum(attempts))

    def close(self) -> None:
        self.backend.close()

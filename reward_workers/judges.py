"""VLM judges as reward models: UnifiedReward-Flex and -Think (pairwise) and UnifiedReward-2.0 (pointwise).

Scoring a group: (1) build every request of the group (pairs from `judge_pairs`, or one per sample),
(2) send them to the backend as one batch, (3) parse the replies, (4) send what failed or did not parse
again, up to `max_retries` times, (5) turn the verdicts into rewards; what never parsed is a tie, counted in
`unparsed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.backends import Generation, JudgeBackend, JudgeRequest
from reward_workers.base import RewardOutput
from reward_workers.judge_parse import (
    PairVerdict,
    PointVerdict,
    parse_flex_reply,
    parse_pointwise_reply,
    parse_think_reply,
)
from reward_workers.judge_prompts import (
    POINTWISE_DIMENSIONS,
    flex_instructions,
    flex_reply_schema,
    media_label,
    pointwise_instructions,
    pointwise_reply_regex,
    think_instructions,
    think_reply_regex,
)
from reward_workers.winrate import Comparison, flex_rewards, judge_pairs, win_rates

log = logging.getLogger(__name__)
RETRY_TEMPERATURE = 0.7  # retries sample, so a garbled greedy reply is not simply repeated


def sample_frames(media: torch.Tensor, num_frames: int) -> list[list[np.ndarray]]:
    """Per sample, the images a judge sees: the image itself, or `num_frames` evenly spaced video frames.

    media: [G, H, W, 3] or [G, F, H, W, 3] uint8. Returns G lists of uint8 [H, W, 3] arrays.
    """
    array = media.numpy()
    if media.dim() == 4:
        return [[image] for image in array]
    frames = array.shape[1]
    index = np.unique(np.round(np.linspace(0, frames - 1, min(num_frames, frames))).astype(int))
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
        replies = _generate(backend, [requests[i] for i in pending], generation)
        failed = []
        for i, reply in zip(pending, replies, strict=True):
            attempts[i] += 1
            verdicts[i] = parse(reply)
            if not verdicts[i].parsed:
                failed.append((i, reply is None))
        pending = [i for i, _ in failed]
        generation = replace(generation, temperature=max(generation.temperature, RETRY_TEMPERATURE))
        if any(transport for _, transport in failed) and attempt < max_retries:
            time.sleep(backend.retry_delay_s * 2**attempt)  # back off a struggling server
    return verdicts, attempts


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


@dataclass(frozen=True)
class PairwiseFormat:
    """What makes a pairwise judge Flex or Think: its question, reply shape, parser and reward."""

    instructions: Callable[[str, bool], str]  # (prompt, video) -> instruction text
    constraint: Callable[[bool, int], dict]  # (video, text_chars) -> Generation kwargs (json_schema or regex)
    parse: Callable[[object], PairVerdict]
    rewards: Callable[[int, list[Comparison]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def _overall_rewards(group_size: int, comparisons: list[Comparison]) -> tuple[torch.Tensor, dict]:
    rates = win_rates(group_size, comparisons)  # [G]
    return rates, {"overall": rates}


FLEX = PairwiseFormat(
    instructions=flex_instructions,
    constraint=lambda video, chars: {"json_schema": flex_reply_schema(video, chars)},
    parse=parse_flex_reply,
    rewards=flex_rewards,
)
THINK = PairwiseFormat(
    instructions=think_instructions,
    constraint=lambda video, chars: {"regex": think_reply_regex(video, chars)},
    parse=parse_think_reply,
    rewards=_overall_rewards,
)


class PairwiseJudge:
    """Rewards from pairwise judgements: per-sample win rates in the group (Flex: mixed with categories)."""

    def __init__(self, backend: JudgeBackend, spec: RewardSpec, reply_format: PairwiseFormat) -> None:
        self.backend, self.spec, self.format = backend, spec, reply_format

    def requests(self, group: MediaGroup) -> tuple[list[tuple[int, int]], list[JudgeRequest]]:
        """The pairs to judge and their requests: instructions, then each side's caption and images."""
        frames = sample_frames(group.media, self.spec.video_frames)
        instructions = self.format.instructions(group.prompt, group.is_video)
        first, second = media_label(group.is_video, 0), media_label(group.is_video, 1)
        pairs = judge_pairs(len(frames), self.spec.pairs_per_sample, self.spec.both_orders)
        requests = [JudgeRequest((instructions, first, *frames[i], second, *frames[j])) for i, j in pairs]
        return pairs, requests

    def score(self, group: MediaGroup) -> RewardOutput:
        pairs, requests = self.requests(group)
        verdicts, attempts = ask(
            self.backend, requests, self._generation(group.is_video), self.format.parse, self.spec.max_retries
        )
        comparisons = [Comparison(i, j, v) for (i, j), v in zip(pairs, verdicts, strict=True)]
        rewards, rates = self.format.rewards(group.media.shape[0], comparisons)
        details = [_pair_details(c, n) for c, n in zip(comparisons, attempts, strict=True)]
        details.append({"kind": "win_rates"} | {name: r.tolist() for name, r in rates.items()})
        return RewardOutput(
            rewards=rewards,
            details=details,
            unparsed=sum(not v.parsed for v in verdicts),
            requests=sum(attempts),
        )

    def _generation(self, video: bool) -> Generation:
        constraint = {}
        if self.spec.structured_output:
            constraint = self.format.constraint(video, self.spec.structured_text_chars)
        return Generation(max_new_tokens=self.spec.max_new_tokens, **constraint)

    def close(self) -> None:
        self.backend.close()


def _pair_details(c: Comparison, attempts: int) -> dict:
    """A judgement for the logs, with winners named by sample index (None: tie)."""
    sides = (c.first, c.second)
    pick = lambda w: None if w is None else sides[w]
    return {
        "kind": "pair",
        "pair": [c.first, c.second],
        "parsed": c.verdict.parsed,
        "attempts": attempts,
        "winner": pick(c.verdict.winner),
        "categories": {k: pick(w) for k, w in c.verdict.categories.items()},
        "reply": c.verdict.details,
    }


class PointwiseJudge:
    """UnifiedReward-2.0: each sample scored alone on 1-5 scales; reward = mean of (score - 1) / 4, in [0, 1].

    A dimension the reply does not give counts 0.5 (a tie); an unreadable reply is 0.5 overall.
    """

    def __init__(self, backend: JudgeBackend, spec: RewardSpec) -> None:
        self.backend, self.spec = backend, spec

    def score(self, group: MediaGroup) -> RewardOutput:
        dims = POINTWISE_DIMENSIONS[group.is_video]
        instructions = pointwise_instructions(group.prompt, group.is_video)
        frames = sample_frames(group.media, self.spec.video_frames)
        requests = [JudgeRequest((instructions, *sample)) for sample in frames]
        regex = {"regex": pointwise_reply_regex(group.is_video)} if self.spec.structured_output else {}
        generation = Generation(max_new_tokens=self.spec.max_new_tokens, **regex)
        parse = lambda reply: parse_pointwise_reply(reply, dims)
        verdicts, attempts = ask(self.backend, requests, generation, parse, self.spec.max_retries)
        rewards = torch.tensor(
            [np.mean([(v.scores[d] - 1) / 4 if d in v.scores else 0.5 for d in dims]) for v in verdicts],
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

"""Parsers of judge replies: pure functions of a string that never raise.

A pairwise reply becomes a `PairVerdict` (who won overall and per category, as seen in the order shown), a
pointwise reply a `PointVerdict`. Whatever cannot be read is a tie (`parsed=False`), counted by the caller.

Two protocols (`RewardSpec.protocol`):
- official: the authors' reading (Pref-GRPO `fastvideo/rewards/unifiedreward_flex.py`, `unifiedreward.py`):
  the reply parsed whole as JSON, else its outermost `{...}`; a winner only where exactly one of
  "image/video 1" and "image/video 2" appears; the first three categories, keyed by their names.
- robust: lenient: JSON inside prose or code fences, truncated JSON (closed at its last complete value), keys in
  any case, winners written as "Image 1", "image_2", 1, "first", "Video 2 is better", categories by letter.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

MAX_REPLY_CHARS = 200_000  # longer replies are cut before parsing (bounds parse time)
MAX_TRIES = 4  # code fences, and opening braces per candidate text, tried as the start of the JSON object
CATEGORY_LETTERS = ("A", "B", "C", "D")
_CATEGORY_KEYWORDS = {  # a category named without its letter is recognised by these words
    "A": ("semantic", "alignment", "accuracy", "faithful"),
    "B": ("quality", "realism", "dynamic"),
    "C": ("aesthetic", "artistry", "narrative", "cinematograph"),
}
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.DOTALL)
_WINNER_NAMED = re.compile(r"\b(?:image|video|picture|sample)[\s_#-]*([12])\b", re.IGNORECASE)
_WINNER_BARE = re.compile(r"^\s*[\"']?\s*([12])\s*[\"']?\s*$")
_TIE = re.compile(r"\b(tie|tied|equal|equally|same|both|neither|draw)\b", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_POINT_SCORE = re.compile(
    r"\b(alignment|coherence|style|physics)\b[^:\n]{0,40}:\s*\**\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE
)


@dataclass(frozen=True)
class PairVerdict:
    """One pairwise judgement, in the order the two samples were shown (0: first, 1: second, None: tie)."""

    winner: int | None
    categories: tuple[tuple[str, int | None], ...] = ()  # (category key, winner) in reply order
    parsed: bool = False  # False: the reply could not be read and counts as a tie
    details: dict = field(default_factory=dict)  # JSON-able parsed content, for logs


@dataclass(frozen=True)
class PointVerdict:
    """One pointwise judgement: scores on a 1-5 scale by dimension name (lower case)."""

    scores: dict[str, float] = field(default_factory=dict)
    parsed: bool = False


UNPARSED = PairVerdict(winner=None, parsed=False)


def winner_index(value: object) -> int | None:
    """0 for the first sample, 1 for the second, None for a tie or anything unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return {1: 0, 2: 1}.get(int(value)) if float(value).is_integer() else None
    if not isinstance(value, str):
        return None
    text = value.strip()[:200]
    named = {m.group(1) for m in _WINNER_NAMED.finditer(text)}
    if len(named) == 1:
        return int(named.pop()) - 1
    if len(named) > 1:  # "Image 2 is better than Image 1": the first one named wins
        return int(_WINNER_NAMED.search(text).group(1)) - 1  # type: ignore[union-attr]
    bare = _WINNER_BARE.match(text)
    if bare:
        return int(bare.group(1)) - 1
    lowered = text.lower()
    if _TIE.search(lowered):
        return None
    if lowered.startswith(("first", "left")):
        return 0
    if lowered.startswith(("second", "right")):
        return 1
    return None


def extract_json_object(text: str) -> dict | None:
    """The first JSON object in `text` (inside prose or a code fence; a truncated one is closed)."""
    text = text[:MAX_REPLY_CHARS]
    fenced = [m.group(1) for _, m in zip(range(MAX_TRIES), _FENCE.finditer(text), strict=False)]
    decoder = json.JSONDecoder(strict=False)
    for candidate in [*fenced, text]:
        start = candidate.find("{")
        for _ in range(MAX_TRIES):  # a few opening braces at most: hostile text may hold thousands
            if start == -1:
                break
            try:
                obj, _ = decoder.raw_decode(candidate, start)
                if isinstance(obj, dict):
                    return obj
            except (ValueError, RecursionError):
                repaired = _close_truncated(candidate[start:])
                if repaired is not None:
                    return repaired
            start = candidate.find("{", start + 1)
    return None


def _close_truncated(text: str) -> dict | None:
    """Cut a JSON text that ends early back to its last complete value and close the open containers."""
    stack: list[str] = []  # closers of the open containers
    safe_end = safe_depth = 0  # the last cut point, and how many containers are open there
    in_string = escaped = value_string = False
    previous = ""  # the last character outside strings that is not white space
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if value_string:  # `"key": "value"` complete: a cut point (the winner is often last)
                    safe_end, safe_depth = i + 1, len(stack)
            continue
        if not ch.isspace():
            previous, before = ch, previous
        if ch == '"':
            in_string, value_string = True, before == ":"
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            safe_end, safe_depth = i + 1, len(stack)
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return None  # a complete object that failed to decode: broken, not truncated
            safe_end, safe_depth = i + 1, len(stack)
        elif ch == ",":
            safe_end, safe_depth = i, len(stack)
    if not stack or safe_end == 0:
        return None
    # the containers open at the cut are still the bottom of the stack: any pop below it made a later cut
    closers = "".join(reversed(stack[:safe_depth]))
    try:
        obj = json.loads(text[:safe_end] + closers, strict=False)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _lower_keys(obj: dict) -> dict:
    return {str(k).strip().lower().replace(" ", "_"): v for k, v in obj.items()}


def _category_letter(name: object, position: int) -> str | None:
    text = str(name or "").strip()
    lettered = re.match(r"^\(?([A-Da-d])(?:[\.\):\s]|$)", text)
    if lettered:
        return lettered.group(1).upper()
    lowered = text.lower()
    for letter, words in _CATEGORY_KEYWORDS.items():
        if any(w in lowered for w in words):
            return letter
    return CATEGORY_LETTERS[position] if position < len(CATEGORY_LETTERS) else None


def _dims_winner(dims: object) -> int | None:
    """A category's winner from its summed dimension scores (score_1 vs score_2), if cat_winner is missing."""
    if not isinstance(dims, list):
        return None
    totals = [0.0, 0.0]
    for dim in dims:
        if not isinstance(dim, dict):
            continue
        d = _lower_keys(dim)
        for side, key in enumerate(("score_1", "score_2")):
            try:
                totals[side] += float(d.get(key, 0))
            except (TypeError, ValueError):
                pass
    if totals[0] == totals[1]:
        return None
    return 0 if totals[0] > totals[1] else 1


def _categories(raw: object) -> tuple[tuple[str, int | None], ...]:
    """Category letter -> winner, from a list of category objects or a dict keyed by category name."""
    if isinstance(raw, dict):
        items = [v | {"name": k} if isinstance(v, dict) else {"name": k, "winner": v} for k, v in raw.items()]
    elif isinstance(raw, list):
        items = raw
    else:
        return ()
    result: dict[str, int | None] = {}
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        c = _lower_keys(item)
        letter = _category_letter(c.get("name", c.get("category", c.get("title"))), position)
        if letter is None or letter in result:
            continue
        if "cat_winner" in c or "winner" in c:
            result[letter] = winner_index(c.get("cat_winner", c.get("winner")))
        elif "dims" in c or "dimensions" in c:
            result[letter] = _dims_winner(c.get("dims", c.get("dimensions")))
    return tuple(result.items())


def parse_flex_reply(text: object) -> PairVerdict:
    """Read a UnifiedReward-Flex reply leniently (robust protocol); never raises."""
    try:
        if not isinstance(text, str):
            return UNPARSED
        obj = extract_json_object(text)
        if obj is None:
            return UNPARSED
        o = _lower_keys(obj)
        winner = winner_index(o.get("winner", o.get("overall_winner", o.get("final_winner"))))
        if winner is None and not _TIE.search(str(o.get("winner", ""))):
            return PairVerdict(winner=None, parsed=False, details={"reply": obj})
        categories = _categories(o.get("categories"))
        return PairVerdict(winner=winner, categories=categories, parsed=True, details=obj)
    except Exception:  # a parser must never take the reward worker down
        return UNPARSED


def parse_think_reply(text: object) -> PairVerdict:
    """Read a UnifiedReward-Think reply leniently (robust protocol); never raises."""
    try:
        if not isinstance(text, str):
            return UNPARSED
        text = text[:MAX_REPLY_CHARS]
        answer = _ANSWER.search(text)
        if answer is not None:
            verdict = answer.group(1)
        else:  # no answer tag: read what follows the reasoning
            tail = text.rsplit("</think>", 1)
            verdict = tail[1] if len(tail) == 2 else ""
        winner = winner_index(verdict)
        if winner is None and not _TIE.search(verdict):
            return UNPARSED
        think = text.split("</think>", 1)[0].replace("<think>", "").strip()
        details = {"think": think[:2000], "answer": verdict.strip()}
        return PairVerdict(winner=winner, parsed=True, details=details)
    except Exception:  # a parser must never take the reward worker down
        return UNPARSED


def parse_pointwise_reply(text: object, dimensions: tuple[str, ...]) -> PointVerdict:
    """Read `Alignment Score (1-5): 4`-style lines for `dimensions` (lower case) leniently; never raises.

    Scores are clamped to [1, 5]; a dimension's first score counts. Parsed if any dimension is read.
    """
    try:
        if not isinstance(text, str):
            return PointVerdict()
        scores: dict[str, float] = {}
        for match in _POINT_SCORE.finditer(text[:MAX_REPLY_CHARS]):
            name = match.group(1).lower()
            if name in dimensions and name not in scores:
                scores[name] = min(5.0, max(1.0, float(match.group(2))))
        return PointVerdict(scores=scores, parsed=bool(scores))
    except Exception:  # a parser must never take the reward worker down
        return PointVerdict()


# ------------------------------------------------------------------------------------------ official protocol
_OFFICIAL_FIRST = re.compile(r"\b(?:video|image)\s*1\b")
_OFFICIAL_SECOND = re.compile(r"\b(?:video|image)\s*2\b")
_OFFICIAL_OUTERMOST = re.compile(r"\{.*\}", re.DOTALL)
_OFFICIAL_POINT_SCORE = re.compile(r"(\w+) Score \(1-5\):\s*([0-5](?:\.\d+)?)")
OFFICIAL_CATEGORIES = 3  # only the first three categories of a reply count


def official_winner(value: object) -> int | None:
    """0 or 1 where exactly one of "image/video 1", "image/video 2" appears in str(value) (any case), else None."""
    lowered = str(value).lower()
    first, second = _OFFICIAL_FIRST.search(lowered), _OFFICIAL_SECOND.search(lowered)
    if first and not second:
        return 0
    if second and not first:
        return 1
    return None


def official_json_object(text: str) -> dict | None:
    """The reply parsed whole as JSON, else its outermost `{...}` (first "{" to last "}"); None if neither is a
    JSON object. No repair of truncated JSON."""
    text = text[:MAX_REPLY_CHARS].strip()
    for candidate in (text, *(m.group(0) for m in [_OFFICIAL_OUTERMOST.search(text)] if m)):
        try:
            obj = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        return obj if isinstance(obj, dict) else None
    return None


def parse_flex_official(text: object) -> PairVerdict:
    """Read a Flex reply as its authors do; never raises. `parsed` = a non-empty JSON object was found (only
    such replies give category evidence); its winner may still be None (a tie)."""
    try:
        obj = official_json_object(text) if isinstance(text, str) and text else None
        if not obj:
            return UNPARSED
        raw = obj.get("categories", [])
        items = raw[:OFFICIAL_CATEGORIES] if isinstance(raw, list) else []  # the authors' code raises otherwise
        categories = tuple(
            (str(c.get("name", "")).strip() or "category", official_winner(c.get("cat_winner", "")))
            for c in items
            if isinstance(c, dict)
        )
        winner = official_winner(obj.get("winner", ""))
        return PairVerdict(winner=winner, categories=categories, parsed=True, details=obj)
    except Exception:  # a parser must never take the reward worker down
        return UNPARSED


def parse_think_official(text: object, video: bool) -> PairVerdict:
    """Read a Think reply as its authors do: the first <answer>...</answer> holds "Image 1 is better" (first
    sample) or "Image 2 is better" (checked in that order); anything else is a tie, counted as unparsed."""
    try:
        if not isinstance(text, str):
            return UNPARSED
        answer = re.search(r"<answer>(.*?)</answer>", text[:MAX_REPLY_CHARS], re.DOTALL)
        verdict = answer.group(1).strip() if answer else ""
        label = "Video" if video else "Image"
        for winner in (0, 1):
            if f"{label} {winner + 1} is better" in verdict:
                return PairVerdict(winner=winner, parsed=True, details={"answer": verdict})
        return UNPARSED
    except Exception:  # a parser must never take the reward worker down
        return UNPARSED


def parse_pointwise_official(text: object, dimensions: tuple[str, ...]) -> PointVerdict:
    """Read `Alignment Score (1-5): 2.69` lines as the authors do (case-sensitive name, 0-5 with decimals, the
    last score of a name counts); never raises. Parsed if any of `dimensions` (lower case) is read."""
    try:
        if not isinstance(text, str):
            return PointVerdict()
        found = {name: float(value) for name, value in _OFFICIAL_POINT_SCORE.findall(text[:MAX_REPLY_CHARS])}
        scores = {d: found[d.capitalize()] for d in dimensions if d.capitalize() in found}
        return PointVerdict(scores=scores, parsed=bool(scores))
    except Exception:  # a parser must never take the reward worker down
        return PointVerdict()

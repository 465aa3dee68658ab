"""What the judges are asked: their authors' templates (data files in `templates/`), and the reply shapes that
opt-in structured outputs hold them to.

Each template is the model's trained input format, a protocol like a chat template: it is read verbatim from
its file (the first line names its source and is dropped) and only `{prompt}` is filled in. A request is the
media first (the first sample's images, then the second's), then this one text part, as the authors send it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
JUDGE_TEMPLATES = ("flex", "think", "pointwise")
POINTWISE_DIMENSIONS = {False: ("alignment", "coherence", "style"), True: ("alignment", "physics", "style")}
IMAGE_CATEGORIES = ("Semantic Alignment & Accuracy", "Image Quality & Realism", "Aesthetics & Artistry")
VIDEO_CATEGORIES = (
    "Semantic Alignment & Accuracy",
    "Video Quality & Dynamic Realism",
    "Narrative, Aesthetics & Cinematography",
)


def _kind(video: bool) -> str:
    return "video" if video else "image"


@cache
def template(judge: str, video: bool) -> str:
    """The verbatim template of `judge` (flex, think, pointwise) for images or videos, `{prompt}` unfilled."""
    if judge not in JUDGE_TEMPLATES:
        raise ValueError(f"judge template must be one of {list(JUDGE_TEMPLATES)}, got {judge!r}")
    text = (TEMPLATES / f"{judge}_{_kind(video)}.txt").read_text(encoding="utf-8")
    return text.split("\n", 1)[1]  # the first line names the source


def render(judge: str, video: bool, prompt: str) -> str:
    """The instruction text of one request: the template with the text prompt put in."""
    return template(judge, video).replace("{prompt}", prompt)


def category_names(video: bool) -> list[str]:
    """The lettered category names, e.g. "A. Semantic Alignment & Accuracy"."""
    names = VIDEO_CATEGORIES if video else IMAGE_CATEGORIES
    return [f"{letter}. {name}" for letter, name in zip("ABC", names, strict=True)]


def flex_reply_schema(video: bool, text_chars: int | None) -> dict:
    """JSON schema of a Flex reply (opt-in): categories A, B, C in order, then an optional category D of the
    model's naming; 3-5 dims each; free-text fields capped at `text_chars` only when given."""
    label = _kind(video).capitalize()
    winner = {"enum": [f"{label} 1", f"{label} 2"]}
    text: dict = {"type": "string"} | ({"maxLength": text_chars} if text_chars is not None else {})
    score = {"type": "integer", "minimum": 0, "maximum": 10}
    dim = _closed_object({"name": text, "reason_1": text, "reason_2": text, "score_1": score, "score_2": score})
    dims = {"type": "array", "items": dim, "minItems": 3, "maxItems": 5}

    def category(name: dict) -> dict:
        return _closed_object({"name": name, "dims": dims, "cat_reason": text, "cat_winner": winner})

    categories = {
        "type": "array",
        "prefixItems": [category({"const": name}) for name in category_names(video)],
        "items": category(text),  # category D
        "minItems": 3,
        "maxItems": 4,
    }
    return _closed_object({"prompt": text, "categories": categories, "reason": text, "winner": winner})


def _closed_object(properties: dict) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def think_reply_regex(video: bool, text_chars: int | None) -> str:
    """Regex of a Think reply (opt-in): reasoning (at most `text_chars` characters when given), then the answer."""
    label = _kind(video).capitalize()
    length = "*" if text_chars is None else f"{{0,{text_chars}}}"
    return rf"<think>[^<]{length}</think>\n?<answer>{label} [12] is better</answer>"


def pointwise_reply_regex(video: bool) -> str:
    """Regex of a pointwise reply (opt-in): one `Name Score (1-5): X` line per dimension, decimals allowed."""
    names = [n.capitalize() for n in POINTWISE_DIMENSIONS[video]]
    return r"\n".join(rf"{name} Score \(1-5\): [1-5](\.[0-9]{{1,4}})?" for name in names)

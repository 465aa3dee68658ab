"""What the judges are asked, and the shapes their replies are held to under structured outputs.

The instructions come before the media in every request, so all requests of a group share their longest prefix
(prefix caching). Categories and reply formats follow the UnifiedReward family (see ARCHITECTURE.md).
"""

from __future__ import annotations

IMAGE_CATEGORIES = ("Semantic Alignment & Accuracy", "Image Quality & Realism", "Aesthetics & Artistry")
VIDEO_CATEGORIES = (
    "Semantic Alignment & Accuracy",
    "Video Quality & Dynamic Realism",
    "Narrative, Aesthetics & Cinematography",
)
POINTWISE_DIMENSIONS = {False: ("alignment", "coherence", "style"), True: ("alignment", "physics", "style")}


def _kind(video: bool) -> str:
    return "video" if video else "image"


def category_names(video: bool) -> list[str]:
    """The lettered category names, e.g. "A. Semantic Alignment & Accuracy"."""
    names = VIDEO_CATEGORIES if video else IMAGE_CATEGORIES
    return [f"{letter}. {name}" for letter, name in zip("ABC", names, strict=True)]


def flex_instructions(prompt: str, video: bool) -> str:
    """UnifiedReward-Flex: a hierarchical comparison of two images (or videos), answered in JSON."""
    kind, label = _kind(video), _kind(video).capitalize()
    media = "each video is shown as frames in time order" if video else "each is one image"
    return (
        f"You judge AI-generated {kind}s. Two {kind}s were made from the same text prompt ({media}): "
        f"{label} 1 is shown first, {label} 2 second. Decide which one is better.\n"
        f"Work top-down through the categories {'; '.join(category_names(video))} "
        "(add a category D only if the prompt needs one). Inside each category pick the 3 to 5 dimensions "
        "that matter most for this prompt; for each, say in one line how each side does (reason_1, reason_2) "
        "and split 10 points between them (score_1 + score_2 = 10). Close each category with cat_reason and "
        "cat_winner, and the whole comparison with reason and winner.\n"
        "Answer with one JSON object and nothing else:\n"
        '{"prompt": "...", "categories": [{"name": "A. ...", "dims": [{"name": "...", "reason_1": "...", '
        '"reason_2": "...", "score_1": 6, "score_2": 4}], "cat_reason": "...", '
        f'"cat_winner": "{label} 1"}}], "reason": "...", "winner": "{label} 1"}}\n'
        f"Text prompt: {prompt}"
    )


def flex_reply_schema(video: bool, text_chars: int) -> dict:
    """JSON schema of a Flex reply: categories A, B, C in order, 3-5 dims each, text <= `text_chars`."""
    label = _kind(video).capitalize()
    winner = {"enum": [f"{label} 1", f"{label} 2"]}
    text = {"type": "string", "maxLength": text_chars}
    score = {"type": "integer", "minimum": 0, "maximum": 10}
    dim = _closed_object(
        {"name": text, "reason_1": text, "reason_2": text, "score_1": score, "score_2": score}
    )
    dims = {"type": "array", "items": dim, "minItems": 3, "maxItems": 5}
    categories = [
        _closed_object({"name": {"const": name}, "dims": dims, "cat_reason": text, "cat_winner": winner})
        for name in category_names(video)
    ]
    return _closed_object(
        {
            "prompt": text,
            "categories": {
                "type": "array",
                "prefixItems": categories,
                "items": False,
                "minItems": 3,
                "maxItems": 3,
            },
            "reason": text,
            "winner": winner,
        }
    )


def _closed_object(properties: dict) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def think_instructions(prompt: str, video: bool) -> str:
    """UnifiedReward-Think: reason first, then name the better one inside answer tags."""
    label = _kind(video).capitalize()
    return (
        f"You judge AI-generated {_kind(video)}s. Two were made from the same text prompt: {label} 1 is "
        f"shown first, {label} 2 second. Think step by step about how well each follows the prompt, its "
        "quality and its aesthetics, inside <think></think>. Then give your verdict inside "
        f'<answer></answer>, exactly "{label} 1 is better" or "{label} 2 is better".\n'
        f"Text prompt: {prompt}"
    )


def think_reply_regex(video: bool, text_chars: int) -> str:
    """Regex of a Think reply with at most `text_chars` characters of reasoning."""
    label = _kind(video).capitalize()
    return rf"<think>[^<]{{0,{text_chars}}}</think><answer>{label} [12] is better</answer>"


def pointwise_instructions(prompt: str, video: bool) -> str:
    """UnifiedReward-2.0: three 1-5 scores for one image (or video), one per line."""
    names = [n.capitalize() for n in POINTWISE_DIMENSIONS[video]]
    lines = "\n".join(f"{name} Score (1-5): X" for name in names)
    return (
        f"You rate one AI-generated {_kind(video)} made from the text prompt below. Give integer scores "
        f"from 1 (poor) to 5 (excellent) for {', '.join(names[:-1])} and {names[-1]}, in this exact "
        f"format:\n{lines}\n"
        f"Text prompt: {prompt}"
    )


def pointwise_reply_regex(video: bool) -> str:
    """Regex of a pointwise reply: one `Name Score (1-5): X` line per dimension."""
    names = [n.capitalize() for n in POINTWISE_DIMENSIONS[video]]
    return r"\n".join(rf"{name} Score \(1-5\): [1-5]" for name in names)


def media_label(video: bool, index: int) -> str:
    """The caption put before the `index`-th (0-based) sample's media in a request."""
    return f"{_kind(video).capitalize()} {index + 1}:"

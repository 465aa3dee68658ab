"""Training prompts: where they come from, and which prompt group each step draws."""

from __future__ import annotations

import random
from pathlib import Path

from flexgrpo.config import ConfigError, PromptsConfig
from flexgrpo.records import PromptGroup

TINY_PROMPTS = [
    "a red cat on a blue sky",
    "a green tree by the sea",
    "a small house with a big car",
    "a photo of a dog in the snow",
    "a blue car on a red road",
    "a big tree and a small house",
    "the sea and the sky at night",
    "a cat and a dog on a green hill",
]


def load_prompts(cfg: PromptsConfig, key: str = "prompts.file") -> list[str]:
    """One prompt per non-empty line of cfg.file, or the built-in tiny list; bad files are a ConfigError naming
    `key` (the config key the file came from)."""
    if cfg.file is None:
        return list(TINY_PROMPTS)
    path = Path(cfg.file)
    if not path.is_file():
        raise ConfigError(f"{key} {cfg.file!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{key} {cfg.file!r} is not UTF-8 text (byte {err.start}): save it as UTF-8, one prompt per line"
        ) from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"{key} {cfg.file!r} has no prompts (one prompt per line expected)")
    return prompts


def prompt_group(prompts: list[str], index: int, *, group_size: int, seed: int) -> PromptGroup:
    """Group `index` of the run's prompt stream: a deterministic function of the index, so a resumed run or a
    re-admitted group draws exactly the same prompt and noise. Prompts come in a fresh shuffled order every epoch."""
    epoch, position = divmod(index, len(prompts))
    order = list(range(len(prompts)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return PromptGroup(f"g{index:06d}", prompts[order[position]], group_size, seed=index)

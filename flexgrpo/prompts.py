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


def load_prompts(cfg: PromptsConfig) -> list[str]:
    """One prompt per non-empty line of cfg.file, or the built-in tiny list."""
    if cfg.file is None:
        return list(TINY_PROMPTS)
    path = Path(cfg.file)
    if not path.is_file():
        raise ConfigError(f"prompts.file {cfg.file!r} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts.file {cfg.file!r} has no prompts (one prompt per line expected)")
    return prompts


def groups_for_step(
    prompts: list[str], step: int, *, groups_per_step: int, group_size: int, seed: int
) -> list[PromptGroup]:
    """The prompt groups of one training step: a deterministic function of the step, so a resumed run
    draws exactly what the interrupted one would have. Prompts go in a fresh shuffled order every epoch."""
    out = []
    for j in range(groups_per_step):
        index = step * groups_per_step + j
        epoch, position = divmod(index, len(prompts))
        order = list(range(len(prompts)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(PromptGroup(f"s{step}-g{j}", prompts[order[position]], group_size, seed=index))
    return out

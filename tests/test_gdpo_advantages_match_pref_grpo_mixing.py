"""reward_combine gdpo: Flex's overall and category win rates are normalised per group separately and blended
0.3/0.7 where a sample has category evidence, summed with CLIP by the spec's weights, and the sum is normalised
over the step: the advantages of Pref-GRPO's compute_weighted_advantages(apply_gdpo=True), written out here."""

from __future__ import annotations

import torch

from learner.grpo import gdpo_advantages, weighted_advantages


def pref_grpo_reference(groups: list[dict[str, torch.Tensor]], flex_w: float, clip_w: float) -> list[torch.Tensor]:
    """The authors' formula by hand: per group (r - mean) / (std + 1e-8), unbiased std; blend; weight; gather."""

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean()) / (x.std() + 1e-8)

    totals = []
    for g in groups:
        blended = 0.3 * norm(g["flex/overall"]) + 0.7 * norm(g["flex/category"])
        flex = torch.where(g["flex/category_mask"] > 0, blended, norm(g["flex/overall"]))
        totals.append(flex_w * flex + clip_w * norm(g["clip"]))
    step = torch.cat(totals)
    return [(t - step.mean()) / (step.std() + 1e-8) for t in totals]


def group(overall: list[float], category: list[float], mask: list[float], clip: list[float]) -> dict:
    flex = [0.3 * o + 0.7 * c if m else o for o, c, m in zip(overall, category, mask, strict=True)]
    return {
        "flex": torch.tensor(flex),
        "flex/overall": torch.tensor(overall),
        "flex/category": torch.tensor(category),
        "flex/category_mask": torch.tensor(mask),
        "clip": torch.tensor(clip),
    }


GROUPS = [
    group([0.75, 0.5, 0.25, 0.5], [0.8, 0.4, 0.2, 0.0], [1, 1, 1, 0], [0.31, 0.28, 0.30, 0.22]),
    group([1.0, 0.667, 0.333, 0.0], [0.6, 0.7, 0.3, 0.4], [1, 1, 1, 1], [0.25, 0.27, 0.26, 0.35]),
]
WEIGHTS = [{"flex": 0.7, "clip": 0.3}] * 2


def test_gdpo_matches_the_authors_mixing() -> None:
    ours = gdpo_advantages(GROUPS, WEIGHTS, [0, 0], global_std=False, clip=5.0, prompts=["a", "b"])
    for got, expected in zip(ours, pref_grpo_reference(GROUPS, 0.7, 0.3), strict=True):
        torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # eps 1e-4 vs 1e-8 only


def test_gdpo_step_is_normalised_and_differs_from_weighted_advantages() -> None:
    ours = torch.cat(gdpo_advantages(GROUPS, WEIGHTS, [0, 0], global_std=False, clip=5.0))
    assert abs(ours.mean().item()) < 1e-5 and abs(ours.std().item() - 1) < 1e-3
    plain = torch.cat(weighted_advantages(GROUPS, WEIGHTS, [0, 0], global_std=False, clip=5.0))
    assert not torch.allclose(ours, plain, atol=1e-2)  # the flex part is blended, not the mixed reward's


def test_without_category_evidence_a_sample_takes_its_overall_advantage() -> None:
    no_evidence = [dict(g, **{"flex/category_mask": torch.zeros(4)}) for g in GROUPS]
    only_flex = [{"flex": 1.0}] * 2
    ours = gdpo_advantages(no_evidence, only_flex, [0, 0], global_std=False, clip=5.0)
    overall_only = [{k: g[k] for k in ("flex/overall",)} | {"flex": g["flex/overall"]} for g in GROUPS]
    expected = gdpo_advantages(overall_only, only_flex, [0, 0], global_std=False, clip=5.0)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_versions_are_normalised_apart_and_clipped() -> None:
    ours = gdpo_advantages(GROUPS, WEIGHTS, [0, 1], global_std=False, clip=0.5)
    assert all(a.abs().max() <= 0.5 for a in ours)
    constant = [{"clip": torch.ones(4)}, {"clip": torch.ones(4)}]
    zeros = gdpo_advantages(constant, [{"clip": 1.0}] * 2, [0, 0], global_std=False, clip=5.0)
    assert all(torch.equal(z, torch.zeros(4)) for z in zeros)

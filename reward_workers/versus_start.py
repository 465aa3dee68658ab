"""An evaluation group scored against the starting policy's group of the same prompt and seeds.

A pairwise judge sees each sample beside its start sample as a 2-sample group (one pair), in both orders: one
group [sample, start] judged with `both_orders`, or, when the spec judges one order, a second group
[start, sample]. The sample's win rate is its group win rate averaged over the orders; Flex's win rate in each
category the judge named (part `category/<name>`) is averaged over the orders whose reply named it (a pair group
is one pair: both samples were compared in a category or neither was). A pointwise scorer scores both groups as
they are.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup, VersusStart
from reward_workers.base import RewardModel, RewardOutput

MASK_SUFFIX = "_mask"  # a component "<part>_mask" says where component <part> has evidence (Flex's category)
CATEGORY_PREFIX = "category/"  # the part of Flex's win rate in one category: "category/<the judge's name>"


def pair_groups(candidate: MediaGroup, reference: MediaGroup, both_orders: bool) -> list[MediaGroup]:
    """The 2-sample groups a pairwise judge scores: per sample k, [candidate_k, start_k] and, unless the judge
    judges both orders itself, [start_k, candidate_k]. Group ids name the sample and the order (their judge
    seeds follow from them)."""
    if candidate.media.shape != reference.media.shape:
        raise ValueError(
            f"{candidate.group_id}: samples {tuple(candidate.media.shape)} and starting samples "
            f"{tuple(reference.media.shape)} differ in shape"
        )
    groups = []
    for k in range(candidate.media.shape[0]):
        pair = torch.stack([candidate.media[k], reference.media[k]])
        groups.append(replace(candidate, group_id=f"{candidate.group_id}/s{k}/first", media=pair))
        if not both_orders:
            groups.append(replace(candidate, group_id=f"{candidate.group_id}/s{k}/second", media=pair.flip(0)))
    return groups


def _parts(out: RewardOutput, index: int) -> dict[str, float]:
    """Sample `index`'s reward ("") and components of a group output; NaN where a component's mask is 0."""
    parts = {"": float(out.rewards[index])} | {k: float(v[index]) for k, v in out.components.items()}
    parts |= {f"{CATEGORY_PREFIX}{name}": float(v[index]) for name, v in out.categories.items()}
    for key, mask in out.components.items():
        if key.endswith(MASK_SUFFIX):
            del parts[key]
            if float(mask[index]) == 0 and key.removesuffix(MASK_SUFFIX) in parts:
                parts[key.removesuffix(MASK_SUFFIX)] = float("nan")
    if "overall" in parts:  # Flex: the reward mixes in categories; the verdict is the overall winner
        parts[""] = parts.pop("overall")
    return parts


def pairwise_rates(outputs: list[RewardOutput], samples: int, both_orders: bool) -> dict[str, torch.Tensor]:
    """Per part, each candidate sample's win rate [S] float32, averaged over the orders it was shown in
    (`outputs` in the order of `pair_groups`); NaN where no order gave the part (a category no reply named)."""
    per_sample = 1 if both_orders else 2
    shown = []  # per sample, its parts in each order shown
    for k in range(samples):
        views = [_parts(outputs[k * per_sample], 0)]  # candidate first
        if not both_orders:
            views.append(_parts(outputs[k * per_sample + 1], 1))  # candidate second
        shown.append(views)
    parts = dict.fromkeys(part for views in shown for view in views for part in view)
    nan = float("nan")
    return {
        part: torch.tensor(
            [torch.tensor([view.get(part, nan) for view in views]).nanmean().item() for views in shown],
            dtype=torch.float32,
        )
        for part in parts
    }


def score_versus_start(
    spec: RewardSpec, model: RewardModel, pairwise: bool, candidates: list[MediaGroup], references: list[MediaGroup]
) -> list[VersusStart]:
    """One evaluation reward over evaluation groups and their start groups (same order); one batch per call."""
    if not pairwise:
        outputs = model.score_many([*candidates, *references])
        n = len(candidates)
        return [
            VersusStart(
                group_id=c.group_id,
                reward=spec.name,
                pairwise=False,
                candidate=_pointwise_parts(outputs[i]),
                reference=_pointwise_parts(outputs[n + i]),
                unparsed=outputs[i].unparsed + outputs[n + i].unparsed,
                requests=outputs[i].requests + outputs[n + i].requests,
            )
            for i, c in enumerate(candidates)
        ]
    per_group = [pair_groups(c, r, spec.both_orders) for c, r in zip(candidates, references, strict=True)]
    outputs = model.score_many([g for groups in per_group for g in groups])
    results, start = [], 0
    for candidate, groups in zip(candidates, per_group, strict=True):
        mine, start = outputs[start : start + len(groups)], start + len(groups)
        results.append(
            VersusStart(
                group_id=candidate.group_id,
                reward=spec.name,
                pairwise=True,
                candidate=pairwise_rates(mine, candidate.media.shape[0], spec.both_orders),
                reference={},
                first_position_wins=sum(o.first_position_wins for o in mine),
                position_decided=sum(o.position_decided for o in mine),
                unparsed=sum(o.unparsed for o in mine),
                requests=sum(o.requests for o in mine),
            )
        )
    return results


def _pointwise_parts(out: RewardOutput) -> dict[str, torch.Tensor]:
    return {"": out.rewards.float()} | {k: v.float() for k, v in out.components.items()}

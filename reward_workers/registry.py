"""Reward models by name: a config's `rewards[i].name` is resolved here, nowhere else."""

from __future__ import annotations

from collections.abc import Callable

from flexgrpo.config import ConfigError, RewardSpec
from reward_workers.base import RewardModel
from reward_workers.tiny_judge import TINY_JUDGE
from reward_workers.tiny_scorers import TINY_SCORERS


def _jpeg_compressibility(spec: RewardSpec) -> RewardModel:
    from reward_workers.programmatic import JpegSize

    return JpegSize(sign=-1.0)


def _jpeg_incompressibility(spec: RewardSpec) -> RewardModel:
    from reward_workers.programmatic import JpegSize

    return JpegSize(sign=1.0)


def _jpeg_compressibility_pairwise(spec: RewardSpec) -> RewardModel:
    from reward_workers.programmatic import JpegPreference

    return JpegPreference(spec, prefer_smaller=True)


def _jpeg_incompressibility_pairwise(spec: RewardSpec) -> RewardModel:
    from reward_workers.programmatic import JpegPreference

    return JpegPreference(spec, prefer_smaller=False)


def _judge_backend(spec: RewardSpec):
    """The backend a judge spec names (vllm, http, transformers); the tiny judge's name maps to its folder."""
    import os

    from reward_workers.backends import HttpBackend, TransformersBackend, VllmBackend
    from reward_workers.tiny_judge import resolve_judge_model

    assert spec.model is not None  # checked by check_reward_specs
    if spec.backend == "http":
        return HttpBackend(
            url=spec.url,  # type: ignore[arg-type]
            model=spec.model,
            api_key=os.environ.get(spec.api_key_env),
            max_concurrency=spec.max_concurrency,
            timeout_s=spec.timeout_s,
        )
    if spec.backend == "transformers":
        return TransformersBackend(resolve_judge_model(spec.model))
    model = resolve_judge_model(spec.model)
    return VllmBackend(model, max_images=2 * spec.video_frames, kv_cache_gib=spec.kv_cache_gib)


def _unifiedreward_flex(spec: RewardSpec) -> RewardModel:
    from reward_workers.judges import FLEX, PairwiseJudge

    return PairwiseJudge(_judge_backend(spec), spec, FLEX)


def _unifiedreward_think(spec: RewardSpec) -> RewardModel:
    from reward_workers.judges import THINK, PairwiseJudge

    return PairwiseJudge(_judge_backend(spec), spec, THINK)


def _unifiedreward_2(spec: RewardSpec) -> RewardModel:
    from reward_workers.judges import PointwiseJudge

    return PointwiseJudge(_judge_backend(spec), spec)


def _scorer_reference(spec: RewardSpec, value: str | None) -> str | None:
    """A scorer's model or processor reference: a tiny scorer's name maps to its cached folder; a path that is
    neither a folder nor a hub id fails in one line naming the reward."""
    from flexgrpo.model_cache import check_model_reference
    from reward_workers.tiny_scorers import TINY_SCORERS, tiny_scorer_path

    if value is None:
        return None
    check_model_reference(f"{spec.name} model", value, TINY_SCORERS)
    return str(tiny_scorer_path(value)) if value in TINY_SCORERS else value


def _clip_score(spec: RewardSpec, *, logit_scale: bool = False) -> RewardModel:
    from reward_workers.clip_score import ClipScore

    model, processor = _scorer_reference(spec, spec.model), _scorer_reference(spec, spec.processor)
    return ClipScore(model, spec.video_frames, processor=processor, logit_scale=logit_scale)  # type: ignore[arg-type]


def _pickscore(spec: RewardSpec) -> RewardModel:
    return _clip_score(spec, logit_scale=True)


def _aesthetic(spec: RewardSpec) -> RewardModel:
    from reward_workers.aesthetic import Aesthetic

    model, processor = _scorer_reference(spec, spec.model), _scorer_reference(spec, spec.processor)
    return Aesthetic(model, spec.video_frames, processor=processor)  # type: ignore[arg-type]


def _image_reward(spec: RewardSpec) -> RewardModel:
    from reward_workers.image_reward import ImageReward

    model, processor = _scorer_reference(spec, spec.model), _scorer_reference(spec, spec.processor)
    return ImageReward(model, spec.video_frames, processor=processor)  # type: ignore[arg-type]


REWARD_MODELS: dict[str, Callable[[RewardSpec], RewardModel]] = {
    "jpeg_compressibility": _jpeg_compressibility,
    "jpeg_incompressibility": _jpeg_incompressibility,
    "jpeg_compressibility_pairwise": _jpeg_compressibility_pairwise,  # prefers the smaller JPEG of each pair
    "jpeg_incompressibility_pairwise": _jpeg_incompressibility_pairwise,  # prefers the larger JPEG of each pair
    "unifiedreward_flex": _unifiedreward_flex,
    "unifiedreward_think": _unifiedreward_think,
    "unifiedreward_2": _unifiedreward_2,
    "clip_score": _clip_score,
    "pickscore": _pickscore,  # PickScore: a CLIP ViT-H/14 fine-tune, exp(logit_scale) * cos(text, image)
    "hpsv2": _clip_score,  # HPSv2: a CLIP ViT-H/14 fine-tune scored by cos(image, text), unscaled
    "aesthetic": _aesthetic,
    "image_reward": _image_reward,
}
SCORERS = ("aesthetic", "clip_score", "hpsv2", "image_reward", "pickscore")  # model-based, loaded in-process
MODEL_REWARDS = (*SCORERS, "unifiedreward_2", "unifiedreward_flex", "unifiedreward_think")  # need a model
JUDGES = ("unifiedreward_2", "unifiedreward_flex", "unifiedreward_think")  # served by a judge backend
JUDGE_BACKENDS = ("http", "transformers", "vllm")
TINY_REWARD_MODELS = (TINY_JUDGE, *TINY_SCORERS)  # model names that are built here, on first use
# rewards that are group win rates of pairwise judgements (the evaluation judges them against the start)
PAIRWISE = (
    "jpeg_compressibility_pairwise",
    "jpeg_incompressibility_pairwise",
    "unifiedreward_flex",
    "unifiedreward_think",
)


def check_reward_specs(specs: list[RewardSpec], key: str = "rewards") -> None:
    """Fail at start-up on an unknown or repeated reward name (listing the known ones), or a judge that lacks
    its model, a known backend, or (http) a URL."""
    seen = set()
    for i, spec in enumerate(specs):
        if spec.name not in REWARD_MODELS:
            raise ConfigError(f"{key}[{i}].name must be one of {sorted(REWARD_MODELS)}, got {spec.name!r}")
        if spec.name in seen:
            raise ConfigError(f"{key}[{i}].name {spec.name!r} appears twice: give each reward once")
        if spec.name in MODEL_REWARDS and not spec.model:
            raise ConfigError(
                f"{key}[{i}].model is required for {spec.name}: a model folder or hub id "
                "(judges: or tiny-qwen2.5-vl-judge; http backend: the served model name)"
            )
        if spec.name in JUDGES and spec.backend not in JUDGE_BACKENDS:
            raise ConfigError(f"{key}[{i}].backend must be one of {list(JUDGE_BACKENDS)}, got {spec.backend!r}")
        if spec.name in JUDGES and spec.backend == "http" and not spec.url:
            raise ConfigError(
                f"{key}[{i}].url is required with backend http: the server's base URL, e.g. http://host:8000/v1"
            )
        seen.add(spec.name)


def build_reward(spec: RewardSpec) -> RewardModel:
    check_reward_specs([spec])
    return REWARD_MODELS[spec.name](spec)

"""The records passed between roles, defined once.

Driver -> rollout worker: `PromptGroup`. Rollout worker -> learner: `TrajectoryGroup` (what training needs);
rollout worker -> reward worker: `MediaGroup` (what judging needs), so bulk latents never travel to the reward
pool. Reward worker -> learner: `ScoredGroup`. Learner -> rollout workers: a `WeightUpdate` header, then the
weights in buckets over the weight-sync group.

They travel between roles only through Ray's object store; what goes to Redis or HTTP is JSON (see
`flexgrpo.control_plane`), never pickle. `RECORD_SCHEMA` is bumped whenever a field changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

RECORD_SCHEMA = 3


@dataclass(frozen=True)
class PromptGroup:
    group_id: str  # unique over the run: "g{index:06d}" for training, "eval-{index}" for evaluation
    prompt: str
    group_size: int  # G: samples to draw for this prompt
    seed: int  # base seed; sample i draws its noise from a generator seeded by (seed, i)


@dataclass(frozen=True)
class PromptEmbedding:
    """Text conditioning of one prompt, as the policy's transformer consumes it."""

    tokens: torch.Tensor  # [L, D] token embeddings
    pooled: torch.Tensor | None = None  # [P] pooled embedding (SD3, FLUX); None for families without one


@dataclass(frozen=True)
class TrajectoryGroup:
    """The trained transitions of one group, with their behaviour log-probs. K = trained steps per sample."""

    group_id: str
    prompt: str
    policy_version: int  # weights that sampled it
    sampler: str  # sampler kind whose step produced the transitions (the learner re-scores with the same)
    noise_level: float  # the sampler's noise level a / eta
    seeds: list[int]  # [G] per-sample noise seeds
    latents: torch.Tensor  # [G, K, *latent] float32, x at each trained step
    next_latents: torch.Tensor  # [G, K, *latent] float32, the drawn x' of that step
    sigmas: torch.Tensor  # [G, K] float32, sigma of each trained step
    next_sigmas: torch.Tensor  # [G, K] float32, sigma' of each trained step
    schedule_sigma_1: float  # the schedule's second sigma (SDE std at sigma = 1)
    log_probs: torch.Tensor  # [G, K] float32 behaviour log-probs
    cond: PromptEmbedding  # the prompt's conditioning
    uncond: PromptEmbedding | None  # negative-prompt conditioning when sampled with CFG
    guidance_scale: float  # CFG scale used while sampling (1.0: no CFG)
    schema: int = RECORD_SCHEMA

    @property
    def group_size(self) -> int:
        return self.latents.shape[0]


@dataclass(frozen=True)
class MediaGroup:
    """The decoded samples of one group, for the judges and the logs."""

    group_id: str
    prompt: str
    policy_version: int
    media: torch.Tensor  # [G, H, W, 3] uint8 images, or [G, F, H, W, 3] uint8 video frames
    schema: int = RECORD_SCHEMA

    @property
    def is_video(self) -> bool:
        return self.media.dim() == 5


@dataclass(frozen=True)
class ScoredGroup:
    """Rewards of one group, from one version of the reward spec."""

    group_id: str
    prompt: str  # groups of the same prompt in a learner step share their advantage statistics
    policy_version: int
    reward_version: int  # the reward spec that scored it; groups of different versions are never normalised together
    rewards: torch.Tensor  # [G] float32 combined reward
    components: dict[str, torch.Tensor]  # reward name -> [G] float32 reward of that model (before weighting);
    # Flex also gives "<name>/overall", "<name>/category" [G] float32 win rates and "<name>/category_mask" [G]
    # float32 1.0 where the sample has category evidence (what reward_combine gdpo mixes)
    weights: dict[str, float] = field(default_factory=dict)  # reward name -> its weight in the spec that scored it
    details: list[dict] = field(default_factory=list)  # judge's parsed replies etc., JSON-able, for logs
    unparsed: int = 0  # judge replies that did not parse (counted as ties)
    requests: int = 0  # judge requests made for this group
    first_position_wins: int = 0  # pairwise judges: decided judgements won by the sample shown first
    position_decided: int = 0  # pairwise judges: judgements with a winner (first_position_wins / this = position bias)
    schema: int = RECORD_SCHEMA


@dataclass(frozen=True)
class TrainedStep:
    """Learner rank -> driver: the outcome of one learner step. The learner owns the policy version."""

    version: int  # policy version of the weights after this step
    metrics: dict[str, float]  # loss/, offpolicy/ figures of this rank
    lost: tuple[str, ...] = ()  # group ids whose trajectories died with a node: no rank trained, version unchanged


@dataclass(frozen=True)
class WeightUpdate:
    """Header of a weight broadcast (`flexgrpo.weight_transport`): the buckets that follow over the weight-sync
    group hold `names` in order, each bucket the concatenation of its tensors' elements; a trailer with the
    version and each bucket's checksum follows them."""

    version: int  # policy version of these weights
    names: list[str]  # [N] trained parameter names, sorted
    shapes: list[list[int]]  # [N] shape of each tensor
    dtypes: list[str]  # [N] torch dtype name of each tensor, e.g. "bfloat16" (a bucket holds one dtype)
    bucket_ends: list[int]  # [B] exclusive end index into `names` of each bucket, increasing, last = N
    ema: bool = False  # the EMA of the weights at `version`: workers keep it apart, for evaluation only
    schema: int = RECORD_SCHEMA

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    def bucket_ranges(self) -> list[tuple[int, int]]:
        """[(start, end)] index ranges into `names`, one per bucket."""
        return list(zip([0, *self.bucket_ends[:-1]], self.bucket_ends, strict=True))

    def max_bucket_bytes(self) -> int:
        sizes = [
            sum(int(torch.Size(s).numel()) for s in self.shapes[a:b]) * getattr(torch, self.dtypes[a]).itemsize
            for a, b in self.bucket_ranges()
        ]
        return max(sizes, default=0)


@dataclass(frozen=True)
class VersusStart:
    """One evaluation prompt scored by one evaluation reward against the starting policy's samples of the same
    prompt and seeds. S = samples per prompt; a part is "" (the reward itself) or a component's name."""

    group_id: str
    reward: str  # the evaluation reward's name
    pairwise: bool  # True: judged beside the start sample; False: each sample scored alone
    candidate: dict[str, torch.Tensor]  # part -> [S] float32. pairwise: each sample's win rate against its start
    # sample over both orders (ties and unreadable replies 0.5; NaN where a component has no evidence);
    # pointwise: the sample's score
    reference: dict[str, torch.Tensor]  # pointwise: part -> [S] float32 the start sample's score; pairwise: {}
    first_position_wins: int = 0  # pairwise: decided judgements won by the sample shown first
    position_decided: int = 0  # pairwise: judgements with a winner
    unparsed: int = 0  # judge replies that did not parse (ties)
    requests: int = 0  # judge requests made

"""The one config schema of flexgrpo: dataclasses loaded as OmegaConf structured configs.

Every option is documented where it is declared. `load_config` merges a YAML recipe and `key=value`
overrides onto the schema and validates the result once; each role then receives its own sub-config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

SAMPLER_KINDS = ("cps", "dance", "ode", "sde")
TRAIN_TIMESTEP_CHOICES = ("fraction", "random", "window")
DTYPES = ("bf16", "fp16", "fp32")
REWARD_COMBINE = ("advantage", "gdpo", "sum")
JUDGE_PROTOCOLS = ("official", "robust")
WANDB_MODES = ("disabled", "offline", "online")
REFERENCE_PLACEMENTS = ("cpu", "gpu", "none")
SYNC_SNAPSHOTS = ("cpu", "device", "none")
DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


MAX_JUDGE_RETRIES = 255  # a judge request reserves 256 sampling seeds: its own, then one per retry


class ConfigError(ValueError):
    """A recipe or override that cannot run; the message names the key and what to change."""


@dataclass
class RunConfig:
    name: str = "tiny"  # run name; the run directory is <output_dir>/<name>
    output_dir: str = "runs"  # parent folder of run directories
    seed: int = 0  # run seed: sample noise derives from (seed, group id, sample index)
    num_steps: int = 30  # learner steps (GRPO updates) to run
    checkpoint_every: int = 0  # checkpoint every N steps (0: only at the end, on SIGTERM and on command)
    resume: bool = True  # continue from the run directory's latest checkpoint when there is one
    keep_checkpoints: int = 3  # complete checkpoints kept in the run directory (older ones are deleted)
    # after a checkpoint, groups trained this many steps ago and before the oldest kept checkpoint leave the Redis
    # ledger, their verdicts kept as counts for the audit: Redis stays bounded over a job of days
    ledger_keep_steps: int = 1000


@dataclass
class PoolConfig:
    num_workers: int = 1  # Ray actors in this pool (learner: DeepSpeed ranks)
    gpus_per_worker: float = 1.0  # GPUs per actor (logical GPUs on a CPU machine); fractions allowed
    cpus_per_worker: float = 0.0  # CPUs reserved per actor (0 lets roles share a small machine)
    min_workers: int | None = None  # cluster.autoscale: the fewest workers it shrinks to (null: num_workers)
    max_workers: int | None = None  # cluster.autoscale: the most workers it grows to (null: num_workers)


@dataclass
class ClusterConfig:
    address: str | None = None  # Ray address to join ("auto", "ray://..."); null starts a local Ray
    num_cpus: int | None = None  # local Ray only: CPUs to declare (null: all)
    num_gpus: int = 3  # local Ray only: GPUs to declare (logical ones on a CPU machine)
    redis_url: str | None = None  # control-plane Redis; null starts an embedded one in the run directory
    max_restarts: int = 5  # restarts of dead actors (rollout, reward, learner) allowed within restart_window_s
    restart_window_s: float = 600.0  # the window of the restart budget; a job past the budget fails
    start_timeout_s: float = 900.0  # a pool's start (placed, models loaded; a rebuilt learner too) must end within this
    learner_wait_s: float = 600.0  # a learner pool being rebuilt (a rank's node lost) waits this long for room in
    # the cluster; then the job stops cleanly (status stopped, the reason recorded), to resume when room returns
    weight_sync_join_s: float = 120.0  # the weight-sync rendezvous (learner rank 0 and the live rollout workers)
    # waits this long for every member; a member lost while joining costs at most this, then the group is rebuilt
    # without it. Above the 60 s a broadcast bucket may take to fail: a member joins after its receive in flight
    rollout: PoolConfig = field(default_factory=PoolConfig)  # the policy's sampling pool
    reward: PoolConfig = field(default_factory=PoolConfig)  # the reward models' pool
    learner: PoolConfig = field(default_factory=PoolConfig)  # the DeepSpeed learner's ranks
    autoscale: bool = False  # grow the rollout or reward pool that holds the learner up, shrink one that idles,
    # within each pool's min_workers..max_workers (orchestration/autoscaling.py); off: pools change by command only


@dataclass
class LoraConfig:
    enabled: bool = True  # train a LoRA adapter (reference policy = adapter disabled); false: full fine-tuning
    rank: int = 32  # LoRA rank r
    alpha: int = 64  # LoRA alpha (scale alpha / r)
    target_modules: list[str] = field(
        default_factory=lambda: [
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "to_add_out",
        ]
    )  # attention projections that get an adapter


@dataclass
class PolicyConfig:
    family: str = "sd3"  # model family adapter: sd3 (SD3/SD3.5), flux, wan
    model: str = "tiny-sd3"  # diffusers pipeline folder, hub id, or a tiny model built offline (tiny-sd3, ...)
    # a folder with a transformer saved by diffusers (a full fine-tune's RUN_DIR/transformer) used in place of
    # the model's own; the model gives the rest (text encoders, VAE, scheduler). None: the model's own
    transformer: str | None = None
    dtype: str = "fp32"  # weights and activations: fp32, bf16 or fp16 (the sampler math is always fp32)
    height: int = 64  # image/video height in pixels
    width: int = 64  # image/video width in pixels
    num_frames: int = 1  # video frames (video families only)
    max_sequence_length: int = 77  # text tokens per prompt
    distilled_guidance_scale: float = 3.5  # guidance-distilled models (FLUX.1-dev): the guidance input
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SamplerConfig:
    kind: str = "sde"  # per-step sampler with log-probs: sde (Flow-GRPO), cps, dance; ode for evaluation only
    noise_level: float = 0.7  # the SDE noise level a (SD3 0.7, FLUX 0.9, CPS 0.8) or Dance eta
    num_steps: int = 10  # denoising steps while training (denoising reduction)
    eval_num_steps: int = 40  # denoising steps for evaluation
    guidance_scale: float = 1.0  # classifier-free guidance; 1.0 turns CFG off
    train_timesteps: str = "fraction"  # which steps are trained: fraction (first ones), random subset, window
    timestep_fraction: float = 0.6  # fraction of the steps trained (fraction, random)
    window_size: int = 2  # Flow-GRPO-Fast: SDE steps in the window (others ODE); only the window is trained


@dataclass
class GRPOConfig:
    group_size: int = 8  # G: samples per prompt
    groups_per_step: int = 4  # prompt groups per learner step
    clip_range: float = 1e-4  # PPO ratio clip epsilon
    kl_beta: float = 0.0  # weight of the KL to the reference policy (LoRA disabled); 0 skips the reference
    adv_clip: float = 5.0  # advantages are clamped to +-adv_clip
    global_std: bool = False  # normalise by the std over the whole step instead of per prompt
    max_staleness: int = 0  # a group trains at most this many versions after the policy that sampled it (0: sync)
    is_weight_cap: float = 2.0  # decoupled PPO: behaviour importance weights pi_prox / pi_behav truncated here
    reward_combine: str = "sum"  # sum (weighted rewards), advantage (weighted advantages), gdpo (Pref-GRPO mixing)


@dataclass
class RewardSpec:
    # reward model from the reward registry: unifiedreward_flex, unifiedreward_think, unifiedreward_2 (judges),
    # clip_score, pickscore, hpsv2, aesthetic, image_reward (scorers), jpeg_compressibility, jpeg_incompressibility
    name: str = MISSING
    weight: float = 1.0  # weight in the combined reward or advantage
    model: str | None = None  # model folder or hub id for model-based rewards
    processor: str | None = None  # scorers: folder or hub id of the tokenizer and image processor (null: model's)
    backend: str = "vllm"  # model-based rewards: vllm (in-process engine), http (OpenAI API), transformers
    url: str | None = None  # http backend: base URL of an OpenAI-compatible server
    api_key_env: str = "OPENAI_API_KEY"  # http backend: environment variable holding the key
    max_concurrency: int = 16  # http backend: requests in flight
    timeout_s: float = 120.0  # http backend: per-request timeout
    max_retries: int = 2  # retries of a failed or garbled judgement before it counts as a tie (at most 255)
    max_new_tokens: int = 4096  # judge reply length (the authors' max_tokens; Flex writes its winner last)
    protocol: str = "official"  # judges: official (the authors' reply reading and reward rule) or robust (lenient)
    temperature: float | None = None  # judges: null uses the model's generation defaults (as served); 0: greedy
    thinking: bool = False  # judges: the chat template's enable_thinking (Qwen3.5 judges are served with it off)
    structured_output: bool = False  # opt-in: constrain judge replies to the reply JSON schema (changes replies)
    both_orders: bool = False  # pairwise judges: judge (i, j) and (j, i) to cancel position bias
    pairs_per_sample: int | None = None  # pairwise judges: compare each sample with k others (null: all pairs)
    structured_text_chars: int | None = None  # structured outputs: cap on each free-text field (null: none)
    video_frames: int = 8  # judges: frames taken evenly from each video (a pairwise request holds twice this)
    kv_cache_gib: float | None = None  # vllm backend: KV cache GiB (null: 1 on CPU, vLLM's memory share on GPUs)


@dataclass
class LearnerConfig:
    lr: float = 3e-4  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    grad_clip: float = 1.0  # gradient norm clip
    zero_stage: int = 2  # DeepSpeed ZeRO stage (0-3)
    micro_batch_size: int = 8  # samples per forward/backward; gradients accumulate over samples and steps
    updates_per_step: int = 1  # optimizer steps per learner step (the step's micro-batches split evenly)
    offload: bool = False  # ZeRO-3 only: keep parameters and optimizer state in CPU memory (fits larger policies)
    activation_checkpointing: bool = False  # recompute the transformer's block activations in the backward pass
    reference: str = "gpu"  # full fine-tune, kl_beta > 0: frozen copy on the device (gpu), CPU via ZeRO-3 (cpu), none
    ema_decay: float = 0.0  # EMA of the trained weights, used for evaluation and export (0: off; e.g. 0.999)
    sync_bucket_mb: float = 128.0  # weight sync: MiB per broadcast bucket (each side holds at most two)
    # what rank 0 sends from: a whole copy on its device or in cpu memory (training goes on at once), or none:
    # two buckets of device memory, refilled as they leave (a publish waits for the broadcast; for large policies)
    sync_snapshot: str = "device"


@dataclass
class PromptsConfig:
    file: str | None = None  # text file, one prompt per line; null uses the built-in tiny prompt list


@dataclass
class EvalConfig:
    every: int = 0  # evaluate every N learner steps (0: never); also after the last step when > 0
    before_training: bool = False  # also evaluate the starting weights (a baseline), logged with step 0
    prompts_file: str | None = None  # held-out prompts, one per line; null uses the built-in tiny list
    num_prompts: int = 4  # held-out prompts per evaluation (the first N of the file)
    samples_per_prompt: int = 2  # ODE samples per prompt, fixed seeds, eval_num_steps steps
    # scorers for the evaluation only, e.g. CLIP beside a Flex judge (empty: the training rewards, as now swapped)
    rewards: list[RewardSpec] = field(default_factory=list)


@dataclass
class WandbConfig:
    project: str | None = None  # Weights & Biases project; null turns W&B logging off
    entity: str | None = None  # W&B team or user (null: your default)
    mode: str = "online"  # online, offline (sync later with `wandb sync`) or disabled


@dataclass
class LoggingConfig:
    tensorboard: bool = True  # write TensorBoard events next to metrics.jsonl
    sample_grid_every: int = 0  # save a sample grid every N steps (0: only at the first and last step)
    wandb: WandbConfig = field(default_factory=WandbConfig)  # optional Weights & Biases logging


@dataclass
class HoldsConfig:
    """Benchmarks and tests: a sleep per unit of work in one stage, standing in for a GPU-bound stage (the CPU
    stays free). Leave at 0 for real runs."""

    rollout_s: float = 0.0  # after sampling each group (on the workers listed in rollout_workers)
    rollout_workers: list[int] | None = None  # indices of the held rollout workers (null: all)
    reward_s: float = 0.0  # after scoring each group
    learner_s: float = 0.0  # after each learner step
    checkpoint_s: float = 0.0  # in each learner rank's checkpoint save (a window for faults in a checkpoint)
    join_s: float = 0.0  # in each rollout worker's weight-sync join, before it connects (a window for faults there)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rewards: list[RewardSpec] = field(
        default_factory=lambda: [RewardSpec(name="jpeg_compressibility")]
    )  # reward models, combined per grpo.reward_combine
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    holds: HoldsConfig = field(default_factory=HoldsConfig)


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Merge a YAML recipe (default: configs/tiny.yaml) and `key=value` overrides onto the schema, then validate."""
    path = Path(recipe) if recipe is not None else DEFAULT_RECIPE
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist")
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.load(path))
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, path)) from None
    for item in overrides:
        _override(merged, item)
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg)
    return cfg


def _override(cfg: DictConfig, item: str) -> None:
    """Apply one `key=value` override (YAML value; a key may index a list: `rewards.0.weight=2`)."""
    key, eq, text = item.partition("=")
    if not eq or not key:
        raise ConfigError(f"override {item!r} is not key=value")
    value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"override {item!r}: " + _explain(err, None)) from None
    except (TypeError, IndexError) as err:  # a list indexed by a name or past its end
        raise ConfigError(f"override {item!r}: no config key {key!r} ({err})") from None


def config_from_dict(data: dict) -> Config:
    """Rebuild a validated Config from a plain dict (as stored in the run registry or a checkpoint)."""
    try:
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))  # type: ignore
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, None)) from None
    validate(cfg)
    return cfg


def with_rewards(cfg: Config, rewards: list[dict]) -> list[RewardSpec]:
    """Reward specs from plain dicts (a swap command, a checkpoint, a --rewards file), validated as the rewards
    of `cfg` (pairs_per_sample against its group size, ...). Raises ConfigError naming the key."""
    return config_from_dict(to_dict(cfg) | {"rewards": rewards}).rewards


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _explain(err: OmegaConfBaseException, path: Path | None) -> str:
    key = getattr(err, "full_key", None) or "?"
    where = f" (in {path})" if path else ""
    first_line = str(err).splitlines()[0]
    if "not in" in first_line or "Key" in first_line and "not" in first_line:
        return f"unknown config key {key!r}{where}: {first_line}"
    return f"bad value for config key {key!r}{where}: {first_line}"


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {sorted(choices)}, got {value!r}")


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: Config) -> None:
    """Reject values that cannot run, naming the key. Names of swappable parts are checked by their tables."""
    _validate_run_and_policy(cfg)
    _validate_sampler(cfg)
    _validate_grpo(cfg)
    _validate_rewards(cfg)
    _validate_learner(cfg)
    _validate_logging_and_eval(cfg)
    _validate_cluster(cfg)


def _validate_run_and_policy(cfg: Config) -> None:
    """run.* and policy.*"""
    _positive("run.num_steps", cfg.run.num_steps)
    _positive("run.checkpoint_every", cfg.run.checkpoint_every, allow_zero=True)
    _positive("run.keep_checkpoints", cfg.run.keep_checkpoints)
    _positive("run.ledger_keep_steps", cfg.run.ledger_keep_steps, allow_zero=True)
    _one_of("policy.dtype", cfg.policy.dtype, DTYPES)
    for key in ("height", "width", "num_frames", "max_sequence_length"):
        _positive(f"policy.{key}", getattr(cfg.policy, key))
    _positive("policy.distilled_guidance_scale", cfg.policy.distilled_guidance_scale)
    if cfg.policy.height % 16 or cfg.policy.width % 16:
        raise ConfigError(
            f"policy.height and policy.width must be multiples of 16, got {cfg.policy.height}x{cfg.policy.width}"
        )
    if cfg.policy.transformer is not None and not (Path(cfg.policy.transformer) / "config.json").is_file():
        raise ConfigError(
            f"policy.transformer {cfg.policy.transformer!r} holds no config.json: give a folder a transformer was "
            "saved to (a full fine-tune writes RUN_DIR/transformer)"
        )
    if cfg.policy.lora.enabled:
        _positive("policy.lora.rank", cfg.policy.lora.rank)
        _positive("policy.lora.alpha", cfg.policy.lora.alpha)
        if not cfg.policy.lora.target_modules:
            raise ConfigError("policy.lora.target_modules is empty: name the modules that get an adapter")


def _validate_sampler(cfg: Config) -> None:
    """sampler.*"""
    s = cfg.sampler
    _one_of("sampler.kind", s.kind, SAMPLER_KINDS)
    if s.kind == "ode":
        raise ConfigError("sampler.kind 'ode' has no exploration noise and cannot train: use sde, cps or dance")
    _one_of("sampler.train_timesteps", s.train_timesteps, TRAIN_TIMESTEP_CHOICES)
    _positive("sampler.num_steps", s.num_steps)
    _positive("sampler.eval_num_steps", s.eval_num_steps)
    _positive("sampler.noise_level", s.noise_level)
    if not 0 < s.timestep_fraction <= 1:
        raise ConfigError(f"sampler.timestep_fraction must be in (0, 1], got {s.timestep_fraction}")
    if s.guidance_scale < 1:
        raise ConfigError(f"sampler.guidance_scale must be >= 1 (1 turns CFG off), got {s.guidance_scale}")
    if s.train_timesteps == "window" and not 1 <= s.window_size <= max(1, s.num_steps // 2):
        raise ConfigError(
            f"sampler.window_size must fit in the first half of the {s.num_steps} steps, got {s.window_size}"
        )


def _validate_grpo(cfg: Config) -> None:
    """grpo.*, and what it needs of the policy, learner and learner pool"""
    g = cfg.grpo
    if g.group_size < 2:
        raise ConfigError(f"grpo.group_size must be >= 2 (advantages compare samples of a prompt), got {g.group_size}")
    _positive("grpo.groups_per_step", g.groups_per_step)
    _positive("grpo.clip_range", g.clip_range)
    _positive("grpo.kl_beta", g.kl_beta, allow_zero=True)
    _positive("grpo.adv_clip", g.adv_clip)
    _positive("grpo.max_staleness", g.max_staleness, allow_zero=True)
    _one_of("grpo.reward_combine", g.reward_combine, REWARD_COMBINE)
    if g.is_weight_cap < 1:
        raise ConfigError(f"grpo.is_weight_cap must be >= 1 (on-policy weights are 1), got {g.is_weight_cap}")
    if g.kl_beta > 0 and not cfg.policy.lora.enabled and cfg.learner.reference == "none":
        raise ConfigError(
            "grpo.kl_beta > 0 needs a reference policy: set learner.reference to gpu or cpu (a frozen copy), "
            "or policy.lora.enabled (the adapter switched off)"
        )
    if g.groups_per_step % cfg.cluster.learner.num_workers:
        raise ConfigError(
            f"grpo.groups_per_step ({g.groups_per_step}) must be a multiple of cluster.learner.num_workers "
            f"({cfg.cluster.learner.num_workers}): each learner rank trains on whole groups"
        )


def _validate_rewards(cfg: Config) -> None:
    """rewards[i].* and eval.rewards[i].*"""
    if not cfg.rewards:
        raise ConfigError("rewards is empty: name at least one reward model")
    _validate_reward_list("rewards", cfg.rewards, cfg.grpo.group_size)
    _validate_reward_list("eval.rewards", cfg.eval.rewards, cfg.grpo.group_size)


def _validate_reward_list(key: str, specs: list[RewardSpec], group_size: int) -> None:
    for i, spec in enumerate(specs):
        _positive(f"{key}[{i}].weight", spec.weight, allow_zero=True)
        _positive(f"{key}[{i}].max_concurrency", spec.max_concurrency)
        _positive(f"{key}[{i}].timeout_s", spec.timeout_s)
        if not 0 <= spec.max_retries <= MAX_JUDGE_RETRIES:
            raise ConfigError(
                f"{key}[{i}].max_retries must be in [0, {MAX_JUDGE_RETRIES}] (a judge request's retries take the "
                f"sampling seeds after its own, {MAX_JUDGE_RETRIES + 1} per request), got {spec.max_retries}"
            )
        _positive(f"{key}[{i}].max_new_tokens", spec.max_new_tokens)
        _one_of(f"{key}[{i}].protocol", spec.protocol, JUDGE_PROTOCOLS)
        if spec.temperature is not None:
            _positive(f"{key}[{i}].temperature", spec.temperature, allow_zero=True)
        if spec.structured_text_chars is not None:
            _positive(f"{key}[{i}].structured_text_chars", spec.structured_text_chars)
        _positive(f"{key}[{i}].video_frames", spec.video_frames)
        if spec.kv_cache_gib is not None:
            _positive(f"{key}[{i}].kv_cache_gib", spec.kv_cache_gib)
        if spec.pairs_per_sample is not None and not 1 <= spec.pairs_per_sample < group_size:
            raise ConfigError(
                f"{key}[{i}].pairs_per_sample must be in [1, group_size - 1 = {group_size - 1}], "
                f"got {spec.pairs_per_sample}"
            )


def _validate_learner(cfg: Config) -> None:
    """learner.*"""
    lr = cfg.learner
    _positive("learner.lr", lr.lr)
    _positive("learner.weight_decay", lr.weight_decay, allow_zero=True)
    _positive("learner.grad_clip", lr.grad_clip)
    _positive("learner.micro_batch_size", lr.micro_batch_size)
    _positive("learner.updates_per_step", lr.updates_per_step)
    if lr.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"learner.zero_stage must be one of [0, 1, 2, 3], got {lr.zero_stage}")
    if len(lr.adam_betas) != 2 or not all(0 <= b < 1 for b in lr.adam_betas):
        raise ConfigError(f"learner.adam_betas must be two numbers in [0, 1), got {lr.adam_betas}")
    _one_of("learner.reference", lr.reference, REFERENCE_PLACEMENTS)
    _one_of("learner.sync_snapshot", lr.sync_snapshot, SYNC_SNAPSHOTS)
    _positive("learner.sync_bucket_mb", lr.sync_bucket_mb)
    if not 0 <= lr.ema_decay < 1:
        raise ConfigError(f"learner.ema_decay must be in [0, 1) (0 turns the EMA off), got {lr.ema_decay}")
    for key in ("offload", "reference"):
        if getattr(lr, key) in (True, "cpu") and lr.zero_stage != 3:
            raise ConfigError(f"learner.{key} offloads to CPU through ZeRO-3: set learner.zero_stage=3")


def _validate_logging_and_eval(cfg: Config) -> None:
    """logging.*, holds.* and eval.*"""
    _positive("logging.sample_grid_every", cfg.logging.sample_grid_every, allow_zero=True)
    _one_of("logging.wandb.mode", cfg.logging.wandb.mode, WANDB_MODES)
    for key in ("rollout_s", "reward_s", "learner_s", "checkpoint_s"):
        _positive(f"holds.{key}", getattr(cfg.holds, key), allow_zero=True)
    _positive("eval.every", cfg.eval.every, allow_zero=True)
    if cfg.eval.num_prompts < 2:
        raise ConfigError(
            f"eval.num_prompts must be >= 2 (win rates get an interval over prompts), got {cfg.eval.num_prompts}"
        )
    _positive("eval.samples_per_prompt", cfg.eval.samples_per_prompt)


def _validate_cluster(cfg: Config) -> None:
    """cluster.*: the pools, and on a local Ray whether they fit"""
    c = cfg.cluster
    _positive("cluster.max_restarts", c.max_restarts, allow_zero=True)
    _positive("cluster.restart_window_s", c.restart_window_s)
    _positive("cluster.start_timeout_s", c.start_timeout_s)
    _positive("cluster.learner_wait_s", c.learner_wait_s)
    _positive("cluster.weight_sync_join_s", c.weight_sync_join_s)
    for pool in ("rollout", "reward", "learner"):
        p: PoolConfig = getattr(c, pool)
        _positive(f"cluster.{pool}.num_workers", p.num_workers)
        _positive(f"cluster.{pool}.gpus_per_worker", p.gpus_per_worker, allow_zero=True)
        _positive(f"cluster.{pool}.cpus_per_worker", p.cpus_per_worker, allow_zero=True)
        low = p.num_workers if p.min_workers is None else p.min_workers
        high = p.num_workers if p.max_workers is None else p.max_workers
        if not 1 <= low <= p.num_workers <= high:
            raise ConfigError(
                f"cluster.{pool}: min_workers <= num_workers <= max_workers with min_workers >= 1 must hold, "
                f"got {low} <= {p.num_workers} <= {high}"
            )
        if pool == "learner" and (low, high) != (p.num_workers, p.num_workers):
            raise ConfigError(
                "cluster.learner: min_workers and max_workers must be null (the learner's world is fixed)"
            )
    if c.address is not None and c.address.startswith("ray://") and not c.redis_url:
        raise ConfigError(
            f"cluster.address {c.address!r} is a Ray Client address: the workers cannot reach a Redis embedded on "
            "this machine; set cluster.redis_url to a Redis the cluster's nodes can reach"
        )
    if c.address is None:
        wanted = sum(
            getattr(c, p).num_workers * getattr(c, p).gpus_per_worker for p in ("rollout", "reward", "learner")
        )
        if wanted > c.num_gpus:
            raise ConfigError(
                f"the pools need {wanted:g} GPUs but cluster.num_gpus is {c.num_gpus}: "
                "raise cluster.num_gpus or shrink cluster.<pool>.num_workers / gpus_per_worker"
            )

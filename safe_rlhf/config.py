"""Structured config schemas: the one source of defaults for every recipe.

Each dataclass below is registered in hydra's ConfigStore; the YAML files in ``conf/`` only select groups and override
values. Static checks live in ``__post_init__`` (run when the composed config is turned into objects), checks that need
the world size live in :func:`validate`. Every failure raises :class:`ConfigError`, whose message is one line naming the
key and what to do.

Inspect the composed config of a recipe without running it::

    python -m safe_rlhf.train --config-name sft --cfg job
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """An invalid configuration. ``str(error)`` is one actionable line that names the offending key."""


def _choice(key: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {choices}")


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} must be {bound}")


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) instead of full fine-tuning: see safe_rlhf/lora.py and docs/models.md."""

    # Train adapters on this model; its base weights stay frozen (and serve as the PPO / DPO reference policy).
    enabled: bool = False
    # Rank r of each adapter (B: out x r, A: r x in).
    rank: int = 8
    # The adapter's output is scaled by alpha / rank.
    alpha: int = 16
    # Module names to adapt; ["all-linear"] = every linear layer except the output layer (and a score model's head,
    # which is trained in full).
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # QLoRA: "4bit" loads the frozen base in 4-bit NF4 (bitsandbytes, double quantization, compute in the training
    # precision) under the adapters; "none" keeps it in the training precision. For a policy (sft, dpo, the PPO
    # actor) with ZeRO 0-2; the export dequantizes and merges. See docs/models.md.
    quantize_base: str = "none"

    def __post_init__(self) -> None:
        # Checked first under the key it sits at (model.lora, actor.lora, critic_lora: check_nested_configs).
        _check_lora(self, "lora")


def _check_lora(lora: Any, key: str) -> None:
    """Range checks of a :class:`LoraConfig` (or its composed node) that sits at ``key`` in the recipe."""
    _positive(f"{key}.rank", lora.rank)
    _positive(f"{key}.alpha", lora.alpha)
    if not lora.target_modules:
        raise ConfigError(f"{key}.target_modules is empty; give module names or [all-linear]")
    _choice(f"{key}.quantize_base", lora.quantize_base, ("none", "4bit"))
    if lora.quantize_base != "none" and not lora.enabled:
        raise ConfigError(f"{key}.quantize_base={lora.quantize_base} needs {key}.enabled=true (QLoRA trains adapters)")


@dataclass
class ModelConfig:
    """Which pretrained model to start from and how to load it."""

    # Hugging Face directory or hub id; "tiny" = the offline tiny Llama built on first use (see safe_rlhf.assets).
    name_or_path: str = "tiny"
    # Tokenizer directory or hub id; None = the same as name_or_path.
    tokenizer: str | None = None
    # Run code shipped with a hub model. Off unless you trust the model's repository.
    trust_remote_code: bool = False
    # Recompute activations in the backward pass to save memory (large models).
    gradient_checkpointing: bool = False
    # LoRA adapters instead of full fine-tuning (trainable models only).
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Vision-language models ("tiny-vlm" or any VLM directory with a processor): keep the vision tower's weights
    # fixed (the projector and the language model train), as Safe RLHF-V and LLaVA fine-tuning do.
    freeze_vision_tower: bool = True


@dataclass
class DataConfig:
    """Datasets, by spec (see docs/data.md for the grammar), and how to turn them into tokens."""

    # Training dataset spec, e.g. "toyworld:sft" or "alpaca:/data/alpaca.json*0.5+sft:/data/mine.jsonl".
    train: str = "toyworld:sft"
    # Evaluation dataset spec; None = hold out `eval_fraction` of the training data.
    eval: str | None = None
    # Fraction of the training data held out for evaluation when `eval` is None (0 = no evaluation).
    eval_fraction: float = 0.05
    # Maximum tokens of prompt + response; longer prompts are errors (or counted skips), long responses are truncated.
    max_length: int = 128
    # What to do with a malformed record: "raise" stops with one line naming file, row and field; "skip" counts it.
    on_error: str = "raise"
    # SFT only, SteerLM: read attribute-labelled data (HelpSteer, toyworld:steer_sft) and write these attributes'
    # values into each prompt (safe_rlhf/steer.py); empty = off.
    steer_attributes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("data.on_error", self.on_error, ("raise", "skip"))
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction={self.eval_fraction} must be in [0, 1)")
        _positive("data.max_length", self.max_length)


@dataclass
class DeepSpeedConfig:
    """How DeepSpeed shards, offloads and casts the models (translated by safe_rlhf.engines.deepspeed_config)."""

    # ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters).
    zero_stage: int = 0
    # Offload to CPU memory: "none", "optimizer", "parameter" (ZeRO-3 only) or "all".
    offload: str = "none"
    # Compute precision: "fp32", "bf16" or "fp16".
    precision: str = "fp32"
    # Clip the global gradient norm to this value (0 = no clipping).
    gradient_clipping: float = 1.0
    # Overlap gradient reduction with the backward pass (ZeRO 1-3).
    overlap_comm: bool = False

    def __post_init__(self) -> None:
        _choice("deepspeed.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _choice("deepspeed.offload", self.offload, ("none", "optimizer", "parameter", "all"))
        _choice("deepspeed.precision", self.precision, ("fp32", "bf16", "fp16"))
        if self.offload in ("parameter", "all") and self.zero_stage != 3:
            raise ConfigError(
                f"deepspeed.offload={self.offload} needs deepspeed.zero_stage=3 (parameters are only partitioned there)"
            )
        if self.offload == "optimizer" and self.zero_stage == 0:
            raise ConfigError("deepspeed.offload=optimizer needs deepspeed.zero_stage>=1")
        _positive("deepspeed.gradient_clipping", self.gradient_clipping, allow_zero=True)


@dataclass
class OptimizerConfig:
    """AdamW and its learning-rate schedule."""

    # Peak learning rate.
    lr: float = 1e-3
    # Decoupled weight decay, >= 0 (not applied to biases and norm weights).
    weight_decay: float = 0.0
    # Adam betas: two numbers in [0, 1).
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # Schedule after warm-up: "constant", "linear" or "cosine".
    scheduler: str = "cosine"
    # Fraction of the total optimizer steps spent warming up linearly from 0.
    warmup_ratio: float = 0.03

    def __post_init__(self) -> None:
        # A recipe with several optimizers (actor_optim, critic_optim) is checked under their own keys before its
        # objects are built (check_nested_configs); a config built here can only be named by its usual key.
        _check_optimizer(self, "optim")


def _check_optimizer(optim: Any, key: str) -> None:
    """Range checks of an :class:`OptimizerConfig` (or its composed node) that sits at ``key`` in the recipe."""
    _positive(f"{key}.lr", optim.lr)
    _positive(f"{key}.weight_decay", optim.weight_decay, allow_zero=True)
    _choice(f"{key}.scheduler", optim.scheduler, ("constant", "linear", "cosine"))
    if not 0.0 <= optim.warmup_ratio < 1.0:
        raise ConfigError(f"{key}.warmup_ratio={optim.warmup_ratio} must be in [0, 1)")
    betas = list(optim.betas)
    if len(betas) != 2:
        raise ConfigError(f"{key}.betas={betas} must be two numbers, e.g. [0.9,0.95]")
    if not all(0.0 <= beta < 1.0 for beta in betas):  # also rejects nan and inf
        raise ConfigError(f"{key}.betas={betas}: each beta must be in [0, 1), e.g. [0.9,0.95]")


def check_nested_configs(composed: Any, schema: type) -> None:
    """Check every optimizer and LoRA config of a composed recipe config under the key it sits at (optim,
    actor_optim, model.lora, actor.lora, critic_lora, ...).

    Runs before ``OmegaConf.to_object``, whose ``__post_init__`` checks cannot know where the config sits.
    """
    for key, hint in get_type_hints(schema).items():
        if key not in composed:
            continue
        if hint is OptimizerConfig:
            _check_optimizer(composed[key], key)
        elif hint is LoraConfig:
            _check_lora(composed[key], key)
            _check_quantized_base(composed, schema, key, composed[key])
        elif hint is ModelConfig and "lora" in composed[key]:
            _check_lora(composed[key].lora, f"{key}.lora")
            _check_quantized_base(composed, schema, f"{key}.lora", composed[key].lora)


# Where a 4-bit base is loaded: the trainable policy of these recipes (score models and critics stay unquantized).
QUANTIZABLE_POLICIES = {"SFTConfig": "model.lora", "DPOConfig": "model.lora", "PPOConfig": "actor.lora"}


def _check_quantized_base(composed: Any, schema: type, key: str, lora: Any) -> None:
    """QLoRA's start-up checks: a policy, ZeRO 0-2, bitsandbytes installed."""
    if lora.quantize_base == "none":
        return
    allowed = QUANTIZABLE_POLICIES.get(schema.__name__)
    if key != allowed:
        raise ConfigError(
            f"{key}.quantize_base={lora.quantize_base}: a 4-bit base is for a policy only (sft / dpo model.lora, "
            "ppo actor.lora); score models and critics load unquantized"
        )
    if int(composed.deepspeed.zero_stage) == 3:
        raise ConfigError(
            f"{key}.quantize_base={lora.quantize_base} needs deepspeed.zero_stage <= 2 (ZeRO-3 would partition the "
            "packed 4-bit weights); the 4-bit base is small enough to replicate"
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"{key}.quantize_base={lora.quantize_base} needs bitsandbytes: pip install 'safe-rlhf[qlora]'"
        )


@dataclass
class BaseTrainConfig:
    """What every training loop shares: length, intervals, checkpoints, resume, export and the non-finite guard.

    A *step* is one optimizer step (SFT, reward and cost models: :class:`TrainConfig`) or one RL iteration (the PPO
    recipes: :class:`RLTrainConfig`).
    """

    # Passes over the training data (RL: the prompt dataset).
    epochs: int = 1
    # Stop after this many steps (-1 = run all epochs).
    max_steps: int = -1
    # Samples per forward/backward pass on one rank (gradient accumulation makes up the rest).
    micro_batch_size: int = 8
    # Evaluate every N steps (0 = only at the end).
    eval_steps: int = 0
    # Write a resumable DeepSpeed checkpoint every N steps (0 = never during training).
    save_steps: int = 0
    # Keep only the newest N resumable checkpoints.
    save_total_limit: int = 2
    # Log metrics every N steps.
    log_steps: int = 1
    # "none" starts fresh; "auto" continues from the newest checkpoint in output_dir/checkpoints if there is one;
    # any other value is a checkpoint directory to continue from.
    resume: str = "none"
    # Start over in an output_dir that holds an earlier run: delete its checkpoints/, metrics.jsonl, model/, eval/ and
    # tensorboard/ first. Without it such a directory is refused (see docs/quickstart.md, "Run directories"); ignored
    # when train.resume finds a checkpoint (a requeued job started with overwrite=true continues instead of wiping).
    overwrite: bool = False
    # Config keys allowed to differ from the resumed run's config.yaml beyond the always-safe ones (logger.*,
    # train.save_steps, ...), e.g. [train.max_steps]; a section name or a pattern (optim.*) covers its keys, * all.
    resume_allow_changes: list[str] = field(default_factory=list)
    # Export a consolidated Hugging Face model (RL: the actor) to output_dir/model at the end.
    export: bool = True
    # Stop (with a checkpoint of the last good state) after this many steps in a row with a non-finite loss.
    max_nonfinite_steps: int = 10
    # Fault injection for testing the guard above: these steps (1-based) get a NaN loss (RL: actor loss). Leave empty.
    inject_nonfinite_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in ("epochs", "micro_batch_size", "log_steps", "save_total_limit", "max_nonfinite_steps"):
            _positive(f"train.{key}", getattr(self, key))
        for key in ("eval_steps", "save_steps"):
            _positive(f"train.{key}", getattr(self, key), allow_zero=True)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"train.max_steps={self.max_steps} must be -1 (all epochs) or > 0")


@dataclass
class TrainConfig(BaseTrainConfig):
    """The training loop of SFT and the score models (a step is one optimizer step); the shared keys are above."""

    # Samples per optimizer step, over all ranks; must be divisible by micro_batch_size x world size.
    batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("train.batch_size", self.batch_size)


@dataclass
class LoggerConfig:
    """Where metrics go. Non-zero ranks never log."""

    # Any of "console" (progress bar + lines), "wandb", "tensorboard"; an empty list logs nothing but metrics.jsonl.
    backends: list[str] = field(default_factory=lambda: ["console"])
    # wandb project name.
    project: str = "safe-rlhf"
    # Run name shown in wandb/tensorboard; None = the output directory's name.
    run_name: str | None = None
    # wandb mode: "auto" (online when WANDB_API_KEY is set, offline otherwise), "online", "offline" or "disabled".
    wandb_mode: str = "auto"

    def __post_init__(self) -> None:
        for backend in self.backends:
            _choice("logger.backends[]", backend, ("console", "wandb", "tensorboard"))
        _choice("logger.wandb_mode", self.wandb_mode, ("auto", "online", "offline", "disabled"))


@dataclass
class SFTConfig:
    """Supervised fine-tuning: ``python -m safe_rlhf.train --config-name sft``."""

    # Which recipe runs this config (set by each recipe's YAML; do not change).
    recipe: str = "sft"
    # The run directory: resolved config, command, logs, metrics, checkpoints and the exported model go here.
    output_dir: str = "runs/sft"
    # Seed for data order, initialisation and sampling.
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class ScoreConfig:
    """What the score model learns and how its scores are kept."""

    # "preference" (Bradley-Terry on pairs; the cost model adds its sign terms), "regression" (multi-attribute MSE)
    # or "moderation" (multi-label BCE over flagged / severity / categories: --config-name moderation).
    objective: str = "preference"
    # Outputs of the score head (regression: one per attribute; PPO-Lag with K constraints: one per constraint).
    score_dim: int = 1
    # Weight a of the score regulariser a * mean(score^2) (reference: 0.001).
    regularization: float = 0.001
    # Cost model only: loss weight of a pair by the unsafer response's severity level 0-3 (minor < moderate < severe);
    # [1, 1, 1, 1] = no weighting, e.g. [1, 1, 2, 4] makes severe-harm pairs count four times.
    severity_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    # Score statistics kept with the model: "none", "running" (mean/var of all scores seen) or "ema".
    normalizer: str = "running"
    # Decay of the "ema" normalizer.
    normalizer_decay: float = 0.99
    # Whether loaders apply the stored statistics (scores become (s - mean) / std downstream).
    normalize: bool = False
    # Length-balanced training: bin pairs by |length difference| and downsample each bin so the preferred response is
    # longer as often as shorter (removes length as a shortcut). 0 = off, otherwise the number of bins.
    length_balance_bins: int = 0
    # Regression: the attribute names (HelpSteer: helpfulness, correctness, coherence, complexity, verbosity).
    attribute_names: list[str] = field(default_factory=list)
    # Regression: weights that combine the attributes into one reward, recorded with the model and used by PPO (may
    # be negative: HelpSteer's verbosity); empty = none recorded (PPO then needs reward_attribute_weights).
    attribute_weights: list[float] = field(default_factory=list)
    # Regression: non-negative weights of the attributes' squared errors in the training loss (empty = equal).
    attribute_loss_weights: list[float] = field(default_factory=list)
    # Reward models: random-negative augmentation (Singhal et al.): this fraction of the training pairs is added
    # again with the preferred response against the preferred response of another prompt (0 = off).
    random_negative_fraction: float = 0.0

    def __post_init__(self) -> None:
        _choice("score.objective", self.objective, ("preference", "regression", "moderation"))
        _choice("score.normalizer", self.normalizer, ("none", "running", "ema"))
        _positive("score.score_dim", self.score_dim)
        _positive("score.regularization", self.regularization, allow_zero=True)
        if not 0.0 <= self.random_negative_fraction <= 1.0:
            raise ConfigError(f"score.random_negative_fraction={self.random_negative_fraction} must be in [0, 1]")
        if self.random_negative_fraction and self.objective != "preference":
            raise ConfigError(
                f"score.random_negative_fraction applies to score.objective=preference, not {self.objective}"
            )
        if len(self.severity_weights) != 4 or any(w < 0 for w in self.severity_weights):
            raise ConfigError(
                f"score.severity_weights={self.severity_weights} must be 4 non-negative numbers (levels 0-3)"
            )
        if self.objective == "regression":
            if len(self.attribute_names) != self.score_dim:
                raise ConfigError(
                    f"score.attribute_names has {len(self.attribute_names)} names "
                    f"but score.score_dim={self.score_dim}; "
                    "give one name per output"
                )
            if self.attribute_weights and len(self.attribute_weights) != self.score_dim:
                raise ConfigError(f"score.attribute_weights needs {self.score_dim} weights, one per attribute")
            if self.attribute_loss_weights and (
                len(self.attribute_loss_weights) != self.score_dim
                or any(w < 0 for w in self.attribute_loss_weights)
                or sum(self.attribute_loss_weights) <= 0
            ):
                raise ConfigError(
                    f"score.attribute_loss_weights={self.attribute_loss_weights} must be {self.score_dim} "
                    "non-negative numbers with a positive sum"
                )


@dataclass
class ModerationConfig:
    """The QA-moderation classifier (recipe moderation): which labels it learns and how its threshold is chosen."""

    # Harm categories to learn, as the data names them ("Cybercrime" for harm:Cybercrime, "harm_id:3" for index
    # lists); empty = every category found in the training data.
    categories: list[str] = field(default_factory=list)
    # Class imbalance: "balanced" weights each output's positives by negatives / positives (clamped to
    # max_pos_weight); "none" = plain BCE (measured on the toy world: docs/moderation.md).
    pos_weight: str = "none"
    # Upper bound of a balanced positive weight.
    max_pos_weight: float = 10.0
    # How the flag threshold saved with the model is chosen on the eval data: "f1" (best F1), "precision" or
    # "recall" (the threshold that meets threshold_target with the best other metric).
    threshold_metric: str = "f1"
    # Target precision or recall for threshold_metric=precision|recall.
    threshold_target: float = 0.95

    def __post_init__(self) -> None:
        _choice("moderation.pos_weight", self.pos_weight, ("balanced", "none"))
        _choice("moderation.threshold_metric", self.threshold_metric, ("f1", "precision", "recall"))
        if self.max_pos_weight < 1:
            raise ConfigError(f"moderation.max_pos_weight={self.max_pos_weight} must be >= 1")
        if not 0.0 < self.threshold_target <= 1.0:
            raise ConfigError(f"moderation.threshold_target={self.threshold_target} must be in (0, 1]")


@dataclass
class ScoreModelConfig:
    """Reward, cost or moderation model training: ``--config-name reward_model`` / ``cost_model`` / ``moderation``."""

    # "reward_model" (helpfulness: better > worse), "cost_model" (harm: unsafer > safer, sign = safety) or
    # "moderation" (flagged / severity / harm-category classifier over one response; score.objective=moderation).
    recipe: str = "reward_model"
    # The run directory (config, command, metrics, checkpoints, model/, eval/).
    output_dir: str = "runs/reward_model"
    # Seed for data order, head initialisation and sampling.
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="toyworld:preference", eval="toyworld:preference_test")
    )
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)

    def __post_init__(self) -> None:
        if self.recipe == "moderation" and self.score.objective == "preference":
            self.score.objective = "moderation"  # the recipe implies its objective (the schema default is preference)
        if (self.recipe == "moderation") != (self.score.objective == "moderation"):
            raise ConfigError(
                f"score.objective={self.score.objective!r} does not fit recipe={self.recipe!r}: "
                "score.objective=moderation goes with --config-name moderation only"
            )
        if self.recipe == "moderation" and self.score.score_dim != 1:
            raise ConfigError(
                "score.score_dim is set by the labels for a moderation model (3 severity outputs + one per category); "
                "leave it at 1 and choose categories with moderation.categories"
            )


@dataclass
class ScoreEvalConfig:
    """Score-model evaluation: ``python -m safe_rlhf.evaluate --config-name score_model model.name_or_path=DIR``."""

    # Which program runs this config (do not change).
    recipe: str = "score_model"
    # Where scores.jsonl and summary.json go.
    output_dir: str = "runs/eval/score_model"
    # Seed (proportion sampling of the data spec).
    seed: int = 42
    # "reward" or "cost": which accuracy is the headline (cost adds sign accuracy); "auto" reads the model's config.
    score_type: str = "auto"
    # Samples per forward pass.
    batch_size: int = 32
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train="toyworld:preference_test", eval_fraction=0.0))
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self) -> None:
        _choice("score_type", self.score_type, ("auto", "reward", "cost"))
        _positive("batch_size", self.batch_size)


@dataclass
class ModerationEvalConfig:
    """Moderation-model evaluation: ``python -m safe_rlhf.evaluate --config-name moderation model.name_or_path=DIR``
    (the evaluation config is ``conf/moderation_eval.yaml``; ``safe_rlhf.evaluate`` reads ``moderation`` as it)."""

    # Which program runs this config (do not change).
    recipe: str = "moderation_eval"
    # Where predictions.jsonl, summary.json and plots/ go.
    output_dir: str = "runs/eval/moderation"
    # Seed (proportion sampling of the data spec).
    seed: int = 42
    # Responses per forward pass.
    batch_size: int = 32
    # Equal-width bins of the calibration (ECE, reliability plot).
    num_bins: int = 10
    # Also report the flag threshold that would meet this precision / recall on these data (never saved).
    threshold_metric: str = "precision"
    threshold_target: float = 0.95
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train="toyworld:qa_test", eval_fraction=0.0))
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        _positive("num_bins", self.num_bins)
        _choice("threshold_metric", self.threshold_metric, ("f1", "precision", "recall"))
        if not 0.0 < self.threshold_target <= 1.0:
            raise ConfigError(f"threshold_target={self.threshold_target} must be in (0, 1]")


@dataclass
class PromptDataConfig:
    """Prompts for rollouts and evaluation, and optional SFT data for the ptx term."""

    # Prompt dataset spec for rollouts (any reader that yields prompts, e.g. prompts, toyworld:prompts).
    train: str = "toyworld:prompts"
    # Held-out prompts answered at eval steps and at the end; null = no evaluation.
    eval: str | None = "toyworld:eval_prompts"
    # SFT data for the ptx term (ppo.ptx_coeff > 0); null = none.
    ptx: str | None = None
    # Longest prompt in tokens; longer prompts are errors (or counted skips with on_error=skip).
    max_prompt_length: int = 48
    # Fraction of the training prompts held out as validation prompts for checkpoint selection (train.select_steps);
    # 0 = none. They are never trained on; the final evaluation still uses data.eval.
    validation_fraction: float = 0.0
    # Longest ptx sample in tokens (prompt + response); null = max_prompt_length + generation.max_new_tokens, the
    # length of a rollout. Longer samples follow on_error (their responses are truncated when the prompt fits).
    ptx_max_length: int | None = None
    # "raise" stops at the first malformed record; "skip" counts it.
    on_error: str = "raise"
    # SteerLM: attribute values (0-4) written into every prompt, e.g. ++data.steer_request={helpfulness:4,verbosity:0}
    # on the command line ("++": the key holds a dict); {} = off.
    steer_request: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("data.on_error", self.on_error, ("raise", "skip"))
        _positive("data.max_prompt_length", self.max_prompt_length)
        for name, value in self.steer_request.items():
            if not 0 <= int(value) <= 4:
                raise ConfigError(f"data.steer_request.{name}={value} must be an integer 0-4")
        if self.ptx_max_length is not None:
            _positive("data.ptx_max_length", self.ptx_max_length)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction={self.validation_fraction} must be in [0, 1)")


@dataclass
class GenerationConfig:
    """How rollouts are sampled. Temperature is applied in every log-prob pass, not only in sampling."""

    # Most response tokens per rollout.
    max_new_tokens: int = 16
    # EOS cannot end a response before this many tokens (benchmarks set it to max_new_tokens for fixed lengths).
    min_new_tokens: int = 0
    # Sampling temperature (reference 1.0).
    temperature: float = 1.0
    # Nucleus sampling (1.0 = off).
    top_p: float = 1.0
    # Top-k sampling (0 = off).
    top_k: int = 0
    # Score given to a response that never produced EOS (it replaces the reward model's score); null = no penalty.
    no_eos_penalty: float | None = -10.0
    # ZeRO-3: gather the actor's weights once per rollout batch instead of layer by layer for every token
    # (much faster generation, costs one full copy of the actor per rank while generating).
    gather_weights: bool = True

    def __post_init__(self) -> None:
        _positive("generation.max_new_tokens", self.max_new_tokens)
        _positive("generation.temperature", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"generation.top_p={self.top_p} must be in (0, 1]")
        _positive("generation.top_k", self.top_k, allow_zero=True)


@dataclass
class PPOSettings:
    """PPO hyper-parameters (reference values in the comments of conf/ppo*.yaml)."""

    # Per-token KL penalty beta in both streams (reference 0.01; the toy world needs more: 0.2).
    kl_coeff: float = 0.2
    # PPO ratio clip epsilon.
    clip_ratio: float = 0.2
    # Critic value clip around the rollout's values.
    value_clip: float = 5.0
    # Clip of each per-token reward / cost (reference 50).
    reward_clip: float = 50.0
    # GAE discount.
    gamma: float = 1.0
    # GAE lambda.
    gae_lambda: float = 0.95
    # Passes over each rollout batch.
    ppo_epochs: int = 2
    # Whiten advantages with masked statistics of the rollout batch.
    whiten_advantages: bool = True
    # Weight of the SFT cross-entropy on data.ptx batches in the actor loss (0 = off; reference 16 with ptx data).
    ptx_coeff: float = 0.0
    # Length penalty on the reward (Singhal et al.): r + 2 sigma (1 - coeff * length); 0 = off.
    length_penalty_coeff: float = 0.0
    # Reward scaling clip((r - mean) / std, -c, c) with the rollout batch's statistics; 0 = off.
    reward_scaling_clip: float = 0.0
    # The length-only reward baseline (Singhal et al.): the reward model's score is replaced by 1 - |len / N - 1|
    # with N this many tokens; 0 = off (the reward model). Evaluation still reports the reward model's score.
    length_only_reward_target: int = 0

    def __post_init__(self) -> None:
        for key in ("clip_ratio", "value_clip", "reward_clip", "ppo_epochs"):
            _positive(f"ppo.{key}", getattr(self, key))
        for key in (
            "kl_coeff",
            "ptx_coeff",
            "length_penalty_coeff",
            "reward_scaling_clip",
            "length_only_reward_target",
        ):
            _positive(f"ppo.{key}", getattr(self, key), allow_zero=True)
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError("ppo.gamma and ppo.gae_lambda must be in [0, 1]")


@dataclass
class LagrangeConfig:
    """The constraints E[cost_k] <= threshold_k and their multipliers (ppo_lag); the fixed lambda (reward shaping)."""

    # One threshold d_k per constraint; K = len(thresholds) constraints.
    thresholds: list[float] = field(default_factory=lambda: [0.0])
    # Per constraint: "mean" (the cost score) or "rate" (1 if the cost score > 0, i.e. the share of unsafe responses).
    constraint_types: list[str] = field(default_factory=lambda: ["mean"])
    # Per constraint: which output of the cost model it reads (a K-output cost model: 0..K-1).
    cost_indices: list[int] = field(default_factory=lambda: [0])
    # Initial lambda (reward shaping: the fixed lambda).
    init: float = 1.0
    # Multiplier learning rate: log_lambda += lr * lambda * (J_C - d).
    lr: float = 0.1
    # Upper bound on lambda.
    max_value: float = 5.0
    # RL steps before the multiplier starts to move.
    delay_steps: int = 0
    # Episodes in the cost window J_C (averaged across ranks).
    window_size: int = 128
    # "log" (the reference update) or "pid" (PID Lagrangian: less overshoot and oscillation).
    mode: str = "log"
    # PID proportional gain (mode=pid).
    kp: float = 0.0
    # PID derivative gain (mode=pid).
    kd: float = 0.0
    # Lower bound on lambda (0 = none; log mode: at most init). Bounds how slowly a decayed lambda reacts.
    min_value: float = 0.0
    # PID: EMA weight of the old value for the violation fed to P (OmniSafe's CPPOPID; 0 = no smoothing).
    p_ema_alpha: float = 0.0
    # PID: EMA weight of the old value for the cost fed to D (0 = no smoothing).
    d_ema_alpha: float = 0.0
    # The multipliers aim at threshold - margin (one margin for every constraint), leaving room for the sampling
    # noise of a held-out estimate; the threshold stays the budget that is logged and reported.
    margin: float = 0.0
    # Per constraint: the prompts it is taken over, "KEY=VALUE" on the prompt records' extra fields (e.g.
    # "system_kind=authority", "risky=true"), or null for every prompt; [] = every constraint over every prompt.
    # A grouped constraint is E[cost_k | prompt in group] <= threshold_k: its window holds only the group's episodes
    # and its cost counts only on them, so a budget can hold under every kind of prompt, not just on average.
    prompt_groups: list[str | None] = field(default_factory=list)
    # Where the cost critic's value heads start: "cost_model" (the cost model's head, as the reference does),
    # "fresh" (a new head on the cost model's backbone: values near 0), or "auto": fresh where the cost model's
    # head predicts something other than the cost stream, i.e. for a "rate" constraint (its episode cost is 0 or 1,
    # the cost model's scores span about +-10). A critic with K heads from a model with another number of outputs
    # always gets a fresh head.
    critic_head: str = "cost_model"
    # What the cost critic learns and the cost advantage follows for a "rate" constraint: "indicator" (1 when the
    # cost model says unsafe: the constrained quantity itself), "probability" (sigmoid of the raw cost score, the
    # cost model's P(unsafe) as its classification loss trains it: on the indicator's 0-1 scale, so the multiplier's
    # gains keep their meaning, but graded near the boundary where the indicator's advantage is all or nothing) or
    # "score" (the cost score itself, normalized if configured, on its own scale). The multiplier tracks the
    # indicator's rate in every case.
    rate_stream: str = "indicator"

    def __post_init__(self) -> None:
        count = len(self.thresholds)
        if self.prompt_groups and len(self.prompt_groups) != count:
            raise ConfigError(
                f"lagrange.prompt_groups needs one entry per constraint (or none); got {len(self.prompt_groups)} "
                f"for {count} thresholds"
            )
        for group in self.prompt_groups:
            if group is not None and (group.count("=") != 1 or not all(part.strip() for part in group.split("="))):
                raise ConfigError(f"lagrange.prompt_groups entry {group!r} must be KEY=VALUE or null")
        if count == 0 or len(self.constraint_types) != count or len(self.cost_indices) != count:
            raise ConfigError(
                "lagrange.thresholds, lagrange.constraint_types and lagrange.cost_indices need one entry per "
                f"constraint; got {len(self.thresholds)}, {len(self.constraint_types)}, {len(self.cost_indices)}"
            )
        for kind in self.constraint_types:
            _choice("lagrange.constraint_types[]", kind, ("mean", "rate"))
        _choice("lagrange.mode", self.mode, ("log", "pid"))
        _choice("lagrange.critic_head", self.critic_head, ("cost_model", "fresh", "auto"))
        _choice("lagrange.rate_stream", self.rate_stream, ("indicator", "probability", "score"))
        _positive("lagrange.init", self.init, allow_zero=self.mode == "pid")
        _positive("lagrange.lr", self.lr, allow_zero=True)
        _positive("lagrange.window_size", self.window_size)
        if self.init > self.max_value:
            raise ConfigError(f"lagrange.init={self.init} exceeds lagrange.max_value={self.max_value}")
        _positive("lagrange.min_value", self.min_value, allow_zero=True)
        if self.min_value > self.init:
            raise ConfigError(f"lagrange.min_value={self.min_value} exceeds lagrange.init={self.init}")
        _positive("lagrange.margin", self.margin, allow_zero=True)
        for key in ("p_ema_alpha", "d_ema_alpha"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"lagrange.{key}={value} must be in [0, 1)")
            if value and self.mode != "pid":
                raise ConfigError(f"lagrange.{key} applies to lagrange.mode=pid only")


@dataclass
class RLTrainConfig(BaseTrainConfig):
    """The RL loop (a step is one RL iteration): how many prompts per iteration and how they are cut for the updates."""

    # Sequences per forward pass on one rank (generation, scoring and updates).
    micro_batch_size: int = 16
    # Prompts per RL iteration over all ranks (each gets one sampled response).
    rollout_batch_size: int = 64
    # Rollouts per PPO optimizer step over all ranks; must divide rollout_batch_size.
    mini_batch_size: int = 32
    # ppo_lag checkpoint selection: every N iterations (and at the end) answer the validation prompts
    # (data.validation_fraction), and deliver in model/ the most rewarding policy that met every constraint there
    # (model_last/ keeps the last iterate, selection.json says why). 0 = off: model/ is the last iterate.
    select_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("rollout_batch_size", "mini_batch_size"):
            _positive(f"train.{key}", getattr(self, key))
        if self.rollout_batch_size % self.mini_batch_size:
            raise ConfigError(
                f"train.mini_batch_size={self.mini_batch_size} must divide "
                f"train.rollout_batch_size={self.rollout_batch_size}"
            )
        _positive("train.select_steps", self.select_steps, allow_zero=True)


@dataclass
class PPOConfig:
    """PPO (reward only), PPO-Lagrangian (Safe RLHF) and PPO with reward shaping (R - lambda C, lambda fixed)."""

    # "ppo", "ppo_lag" or "ppo_reward_shaping" (set by each recipe's YAML).
    recipe: str = "ppo_lag"
    # The run directory.
    output_dir: str = "runs/ppo_lag"
    # Seed for prompt order (the same on every rank); sampling uses seed + rank.
    seed: int = 42
    # The policy to improve (an SFT model); also the frozen reference policy.
    actor: ModelConfig = field(default_factory=lambda: ModelConfig(name_or_path="runs/sft/model"))
    # The reward model directory (a safe-rlhf score model); the reward critic starts from it.
    reward_model: str = "runs/reward_model/model"
    # The cost model directory; the cost critic starts from it (not used by plain ppo).
    cost_model: str = "runs/cost_model/model"
    # A multi-attribute reward model (HelpSteer): weights that combine its outputs into the reward; empty = the
    # weights recorded with the model, else HELPSTEER_ATTRIBUTE_WEIGHTS when its attributes are HelpSteer's five.
    reward_attribute_weights: list[float] = field(default_factory=list)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    # Actor optimizer.
    actor_optim: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=1e-4, scheduler="constant", warmup_ratio=0.0)
    )
    # Critic optimizer (both critics).
    critic_optim: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=5e-4, scheduler="constant", warmup_ratio=0.0)
    )
    # LoRA for both critics (the actor's is actor.lora); the critics keep their heads trainable in full.
    critic_lora: LoraConfig = field(default_factory=LoraConfig)
    # Recompute the critics' activations in the backward pass (the actor's is actor.gradient_checkpointing).
    critic_gradient_checkpointing: bool = False
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        if self.train.select_steps:
            if self.recipe != "ppo_lag":
                raise ConfigError(f"train.select_steps selects by the constraints of ppo_lag; recipe={self.recipe}")
            if self.data.validation_fraction <= 0:
                raise ConfigError("train.select_steps needs validation prompts: set data.validation_fraction, e.g. 0.1")


@dataclass
class GuardrailConfig:
    """The arena's filter-and-regenerate guardrail (safe_rlhf.guardrail); off unless ``model`` is set."""

    # A moderation model directory (--config-name moderation); null = no guardrail.
    model: str | None = None
    # Regenerations of a blocked answer after the first (Beaver-Guard-V: 5).
    max_rounds: int = 5
    # Block answers flagged at or above this severity (1 minor, 2 moderate, 3 severe).
    min_severity: int = 1
    # Delivered when every round is blocked (toy world: a refusal in its own words).
    fallback: str = "sorry i cannot do that"
    # Also judge each prompt on its own, and what a flagged prompt gets: "answer" (only logged) or "fallback".
    check_prompt: bool = False
    on_flagged_prompt: str = "answer"
    # Pairs per moderation forward pass.
    batch_size: int = 64

    def __post_init__(self) -> None:
        _positive("guardrail.max_rounds", self.max_rounds, allow_zero=True)
        if self.min_severity not in (1, 2, 3):
            raise ConfigError(f"guardrail.min_severity={self.min_severity} must be 1, 2 or 3")
        _choice("guardrail.on_flagged_prompt", self.on_flagged_prompt, ("answer", "fallback"))
        _positive("guardrail.batch_size", self.batch_size)
        if not self.fallback.strip():
            raise ConfigError("guardrail.fallback is empty; give the safe answer to deliver when every round fails")


@dataclass
class ArenaConfig:
    """Policies answer the same prompts; reward and cost models (and toy-world judges) score them.

    ``python -m safe_rlhf.evaluate --config-name arena policies.sft=runs/sft/model policies.ppo_lag=runs/ppo_lag/model``
    """

    # Which program runs this config (do not change).
    recipe: str = "arena"
    # Where responses.jsonl / responses.csv, summary.json, plots/ and report.md go.
    output_dir: str = "runs/arena"
    # Seed for sampling (the same prompts and seeds for every policy).
    seed: int = 42
    # name -> model directory, in the order they appear in tables.
    policies: dict[str, str] = field(default_factory=dict)
    # The policy the others are compared with (win rates, safe/unsafe x better/worse).
    baseline: str = "sft"
    # Reward model directory.
    reward_model: str = "runs/reward_model/model"
    # Cost model directory.
    cost_model: str = "runs/cost_model/model"
    # Cost threshold drawn in plots (e.g. the PPO-Lag budget); null = none.
    threshold: float | None = None
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    # Prompts per generation pass per rank.
    micro_batch_size: int = 32
    # With guardrail.model set, every policy is also reported guarded, as "<name>+guard".
    guardrail: GuardrailConfig = field(default_factory=GuardrailConfig)

    def __post_init__(self) -> None:
        if self.policies and self.baseline not in self.policies:
            raise ConfigError(f"baseline={self.baseline!r} is not one of policies: {', '.join(self.policies)}")
        _positive("micro_batch_size", self.micro_batch_size)


@dataclass
class LengthBiasConfig:
    """Length-bias diagnostics: ``python -m safe_rlhf.evaluate --config-name length_bias arena_dir=runs/arena``."""

    # Which program runs this config (do not change).
    recipe: str = "length_bias"
    # Where summary.json and the plot go.
    output_dir: str = "runs/length_bias"
    # Seed (proportion sampling of the data spec).
    seed: int = 42
    # The reward model whose length correlation is measured.
    reward_model: str = "runs/reward_model/model"
    # Preference pairs to score (their labels' length preference is reported too).
    data: DataConfig = field(default_factory=lambda: DataConfig(train="toyworld:preference_test", eval_fraction=0.0))
    # An arena run directory (responses.jsonl): policy outputs for the correlation and the gain decomposition.
    arena_dir: str | None = None
    # The policy the reward gain is measured from.
    baseline: str = "sft"
    # Length buckets of the gain decomposition.
    num_buckets: int = 5
    # Pairs per forward pass.
    batch_size: int = 32
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


@dataclass
class PipelineConfig:
    """The whole pipeline: ``python -m safe_rlhf.pipeline`` (what ``make demo`` runs)."""

    # Which program runs this config (do not change).
    recipe: str = "pipeline"
    # Every stage writes into a sub-directory of this one; summary.json and report.md go here.
    output_dir: str = "runs/demo"
    # Seed passed to every stage.
    seed: int = 42
    # Several training seeds: the whole pipeline once per seed into output_dir/seed-S, then the mean and spread per
    # policy over seeds (seeds_summary.json, seeds_report.md, a helpfulness-vs-harm plot). Empty = one run with seed.
    seeds: list[int] = field(default_factory=list)
    # Stages to run, in pipeline order (see safe_rlhf.pipeline.STAGES).
    stages: list[str] = field(
        default_factory=lambda: [
            "sft", "reward_model", "cost_model", "ppo", "ppo_lag", "ppo_reward_shaping", "arena", "length_bias",
            "report",
        ]
    )  # fmt: skip
    # Skip a stage whose output already exists (an interrupted pipeline continues).
    skip_existing: bool = True
    # Command prefix of every stage: "" = this Python; e.g. "deepspeed --num_gpus 8 --master_port 29650".
    launcher: str = ""
    # Stages log only to metrics.jsonl (their consoles go to output_dir/logs/STAGE.log either way).
    quiet: bool = True
    # The PPO-Lag constraint threshold drawn in the report's plots.
    threshold: float = 0.05
    # Share of the training prompts every RL stage holds out (the same budget for all); PPO-Lag's checkpoint
    # selection answers them. 0 = none (and no selection).
    validation_fraction: float = 0.1
    # PPO-Lag delivers the most rewarding checkpoint, every N iterations, that met its budget on those prompts
    # (0 = the last iterate). Both are added before the rl / ppo_lag lists, which may set the keys themselves.
    select_steps: int = 10
    # Fixed lambdas of the reward-shaping baselines (one run each: a small and a large one).
    shaping_lambdas: list[float] = field(default_factory=lambda: [0.1, 2.0])
    # Extra overrides per stage (hydra syntax).
    sft: list[str] = field(default_factory=list)
    reward_model: list[str] = field(default_factory=list)
    cost_model: list[str] = field(default_factory=list)
    # Overrides shared by every RL stage (ppo, ppo_lag, reward shaping): the same budget for all of them.
    rl: list[str] = field(default_factory=list)
    ppo: list[str] = field(default_factory=list)
    ppo_lag: list[str] = field(default_factory=list)
    shaping: list[str] = field(default_factory=list)
    # Overrides shared by the preference-optimisation stages (dpo_better, dpo_safer, safe_dpo; not in the default
    # stages: add them, or run make demo-dpo).
    dpo: list[str] = field(default_factory=list)
    arena: list[str] = field(default_factory=list)
    # The image-swap control (stage swap_control, the multimodal pipeline): a second arena over these prompts, the
    # held-out questions with each picture swapped for another class's (toyworld:vision_eval_swapped), paired with
    # the arena's answers by prompt id (safe_rlhf.analysis.swap_control).
    swap_control_data: str | None = None

    def __post_init__(self) -> None:
        known = ("sft", "reward_model", "cost_model", "ppo", "ppo_lag", "ppo_reward_shaping", "dpo_better",
                 "dpo_safer", "safe_dpo", "arena", "swap_control", "length_bias", "report")  # fmt: skip
        for stage in self.stages:
            _choice("stages[]", stage, known)
        if "swap_control" in self.stages and not self.swap_control_data:
            raise ConfigError(
                "stages has swap_control but swap_control_data is not set (e.g. toyworld:vision_eval_swapped)"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction={self.validation_fraction} must be in [0, 1)")
        _positive("select_steps", self.select_steps, allow_zero=True)


@dataclass
class DPOSettings:
    """DPO / IPO (``--config-name dpo``) and SafeDPO (``--config-name safe_dpo``); the math is in docs/recipes.md."""

    # Which preference orders a pair: "better" (helpfulness, better_response_id) or "safer" (harmlessness,
    # safer_response_id); safe_dpo needs "better" (its transformation reorders helpfulness pairs by safety labels).
    label: str = "better"
    # beta of the implicit reward beta * log(pi / pi_ref): larger keeps the policy closer to the reference (ref. 0.1).
    beta: float = 0.1
    # "sigmoid" (DPO: -log sigmoid(beta h)) or "ipo" ((h - 1 / (2 beta))^2); safe_dpo: sigmoid only.
    loss_type: str = "sigmoid"
    # Conservative DPO: the probability eps in [0, 0.5) that a label is wrong (sigmoid only; 0 = plain DPO).
    label_smoothing: float = 0.0
    # Weight of the chosen response's NLL (mean per token) added to each pair's loss; 0 = off.
    nll_coeff: float = 0.0
    # safe_dpo only: margin Delta >= 0 subtracted from beta h where the chosen is safe and the rejected unsafe.
    safety_margin: float = 0.0
    # safe_dpo only: pairs whose two responses are both unsafe are "drop"ped (the SafeDPO paper) or "keep"t in
    # helpfulness order without margin.
    both_unsafe: str = "drop"
    # Log-probs of the frozen reference for every pair computed once before training and kept (no reference model
    # while training; one extra pass over the data at start-up and after each resume); false = a frozen reference
    # engine runs next to the policy on every micro-batch.
    precompute_reference: bool = False
    # Mean log-prob per response token instead of the sum (length-normalised implicit rewards; TRL does this for IPO).
    average_log_probs: bool = False

    def __post_init__(self) -> None:
        _choice("dpo.label", self.label, ("better", "safer"))
        _choice("dpo.loss_type", self.loss_type, ("sigmoid", "ipo"))
        _choice("dpo.both_unsafe", self.both_unsafe, ("drop", "keep"))
        _positive("dpo.beta", self.beta)
        _positive("dpo.nll_coeff", self.nll_coeff, allow_zero=True)
        _positive("dpo.safety_margin", self.safety_margin, allow_zero=True)
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"dpo.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError(f"dpo.label_smoothing applies to dpo.loss_type=sigmoid only, not {self.loss_type}")


@dataclass
class DPOConfig:
    """Preference optimisation without RL: ``--config-name dpo`` (DPO, IPO) or ``--config-name safe_dpo`` (SafeDPO)."""

    # "dpo" or "safe_dpo" (set by each recipe's YAML).
    recipe: str = "dpo"
    # The run directory (config, command, metrics, checkpoints, model/).
    output_dir: str = "runs/dpo"
    # Seed for data order.
    seed: int = 42
    # The policy to train (an SFT model); the frozen reference is the same weights.
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name_or_path="runs/sft/model"))
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="toyworld:preference", eval="toyworld:preference_test")
    )
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4))
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    dpo: DPOSettings = field(default_factory=DPOSettings)

    def __post_init__(self) -> None:
        _choice("recipe", self.recipe, ("dpo", "safe_dpo"))
        if self.recipe == "safe_dpo":
            if self.dpo.label != "better":
                raise ConfigError("safe_dpo reorders helpfulness pairs by safety: dpo.label must be better")
            if self.dpo.loss_type != "sigmoid" or self.dpo.label_smoothing:
                raise ConfigError("safe_dpo has a sigmoid loss: dpo.loss_type=sigmoid and dpo.label_smoothing=0")
        else:
            for key, unused in (("safety_margin", 0.0), ("both_unsafe", "drop")):
                if getattr(self.dpo, key) != unused:
                    raise ConfigError(f"dpo.{key} applies to --config-name safe_dpo only; dpo ignores safety labels")


RECIPE_SCHEMAS: dict[str, type] = {
    "sft": SFTConfig,
    "reward_model": ScoreModelConfig,
    "cost_model": ScoreModelConfig,
    "moderation": ScoreModelConfig,
    "score_model": ScoreEvalConfig,
    "moderation_eval": ModerationEvalConfig,
    "ppo": PPOConfig,
    "ppo_lag": PPOConfig,
    "ppo_reward_shaping": PPOConfig,
    "dpo": DPOConfig,
    "safe_dpo": DPOConfig,
    "arena": ArenaConfig,
    "length_bias": LengthBiasConfig,
    "pipeline": PipelineConfig,
}


_REGISTERED_SCHEMAS: set[str] = set()


def register_configs() -> None:
    """Register every recipe schema as ``<recipe>_schema`` for the YAML defaults lists.

    Once per schema and process: storing one converts its whole dataclass tree (tens of ms each, half the time of a
    config load, which calls this every time), and the store is process-wide."""
    store = ConfigStore.instance()
    for name, schema in RECIPE_SCHEMAS.items():
        if name not in _REGISTERED_SCHEMAS:
            store.store(name=f"{name}_schema", node=schema(recipe=name))
            _REGISTERED_SCHEMAS.add(name)


def validate(config: Any, world_size: int) -> None:
    """Checks that need the launch (world size). ``config`` is a schema object (after ``OmegaConf.to_object``)."""
    train = getattr(config, "train", None)
    if isinstance(train, RLTrainConfig):
        for key in ("rollout_batch_size", "mini_batch_size"):
            per_pass = train.micro_batch_size * world_size
            if getattr(train, key) % per_pass:
                raise ConfigError(
                    f"train.{key}={getattr(train, key)} is not divisible by train.micro_batch_size x world size "
                    f"= {train.micro_batch_size} x {world_size} = {per_pass}; set it to a multiple of {per_pass}"
                )
    elif train is not None and hasattr(train, "micro_batch_size"):
        per_step = train.micro_batch_size * world_size
        if train.batch_size % per_step != 0:
            raise ConfigError(
                f"train.batch_size={train.batch_size} is not divisible by train.micro_batch_size x world size "
                f"= {train.micro_batch_size} x {world_size} = {per_step}; "
                f"set train.batch_size to a multiple of {per_step}"
            )
    data = getattr(config, "data", None)
    if data is not None:
        _validate_dataset_specs(data)


def _validate_dataset_specs(data: Any) -> None:
    """Unknown dataset names fail here, at start-up, not when the first batch is read."""
    from safe_rlhf.data import get_reader, parse_spec

    if hasattr(data, "train") and not (data.train or "").strip():
        raise ConfigError("data.train is empty; give a dataset spec such as toyworld:sft (see docs/data.md)")
    for key in ("train", "eval", "prompts", "ptx"):
        spec = getattr(data, key, None)
        if spec:
            try:
                for component in parse_spec(spec):
                    get_reader(component.reader)
            except (ValueError, KeyError) as error:
                message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
                raise ConfigError(f"data.{key}={spec}: {message}") from None

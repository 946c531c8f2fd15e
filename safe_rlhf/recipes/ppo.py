"""PPO on language with a reward model, a cost model and Lagrange multipliers (Safe RLHF), plus its two baselines.

Run it (after SFT, reward model and cost model; the defaults read runs/sft/model, runs/reward_model/model and
runs/cost_model/model)::

    python -m safe_rlhf.train --config-name ppo_lag                       # Safe RLHF: reward s.t. E[cost] <= d
    python -m safe_rlhf.train --config-name ppo                           # reward only
    python -m safe_rlhf.train --config-name ppo_reward_shaping lagrange.init=0.5   # PPO on R - 0.5 C, lambda fixed
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --master_port 29621 --module safe_rlhf.train --config-name ppo_lag \\
        deepspeed=zero3 output_dir=runs/ppo_lag_z3
    # two constraints: mean cost <= -2 and share of unsafe responses <= 0.1, from one cost model output
    python -m safe_rlhf.train --config-name ppo_lag lagrange.thresholds=[-2.0,0.1] \\
        lagrange.constraint_types=[mean,rate] lagrange.cost_indices=[0,0]

One RL iteration reads like the method (``iteration``; the same numbers label the code):
1. generate: sample a response for each prompt, micro-batch by micro-batch, cut after the first EOS, and pad the
   pieces into one rollout-batch record (``Rollout``, torchtune's Trajectory);
2. score: reward model R and cost model C at the last real token;
3. reward transforms over the whole rollout batch of every rank: no-EOS penalty, shaping, length penalty, scaling;
4. log-probs of the actor ("old") and the reference (temperature applied in every pass) and the critics' values;
5. streams: per-token r_t = -beta kl_t + [last] R and c_t = +beta kl_t + [last] C, GAE per stream
   (safe_rlhf.algorithms); then the multipliers lambda_k from the window mean of episode costs across ranks
   (computed on rank 0, broadcast);
6. update: PPO-clip on (A_r - sum lambda_k A_c,k) / (1 + sum lambda_k), whitened over the batch of every rank,
   clipped value losses for both critics; an optimizer step with a non-finite gradient is skipped.

Logged besides: entropy, approximate KL between old and new policy, the mean ratio, and each critic's explained
variance (CleanRL's diagnostics). Evaluation answers held-out prompts; judging and summaries live in
safe_rlhf.analysis.policy_eval, so this recipe knows no dataset's ground truth.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from safe_rlhf import distributed, engines, memory
from safe_rlhf.algorithms import (
    LagrangeMultiplier,
    clipped_value_loss,
    combine_attributes,
    combined_advantages,
    explained_variance,
    gae,
    kl_penalized_rewards,
    length_only_reward,
    length_penalized_scores,
    masked_entropy,
    masked_mean,
    ppo_clip_loss,
    scaled_scores,
)
from safe_rlhf.algorithms.selection import Candidate, select_checkpoint
from safe_rlhf.algorithms.sft import sft_loss_sum
from safe_rlhf.config import ConfigError, LagrangeConfig, PPOConfig
from safe_rlhf.logger import write_run_files
from safe_rlhf.moderation import is_moderation_model, moderation_costs
from safe_rlhf.recipes.common import (
    REQUEUE_EXIT_CODE,
    BatchSchedule,
    NonFiniteError,
    NonFiniteGuard,
    PreemptionWatcher,
    all_finite,
    chunks,
    create_logger,
    save_or_stop,
    seed_everything,
    shard,
    step_unless_nonfinite_gradients,
    to_device,
    zero_backward,
)
from safe_rlhf.recipes.rollout import (
    Generated,
    Rollout,
    batch_mean_std,
    concat_padded,
    gather_log_probs,
    policy_log_probs,
    policy_logits,
    sample_responses,
    truncate_after_eos,
)
from safe_rlhf.score_model import (
    end_scores,
    load_score_model,
    reward_attribute_weights,
    score_metadata,
    scores_for_use,
    token_scores,
)


def ptx_max_length(config: PPOConfig) -> int:
    """Longest ptx sample: ``data.ptx_max_length``, or by default as long as a rollout (prompt + response budget)."""
    return config.data.ptx_max_length or config.data.max_prompt_length + config.generation.max_new_tokens


def cost_critic_fresh_head(lagrange: LagrangeConfig, cost_model_outputs: int) -> bool:
    """Whether the cost critic gets a fresh value head instead of the cost model's (see lagrange.critic_head)."""
    if cost_model_outputs != len(lagrange.thresholds) or lagrange.critic_head == "fresh":
        return True
    # auto: the cost model's head predicts the cost score, which is a rate constraint's stream only under
    # lagrange.rate_stream=score (the indicator and the probability are on a 0-1 scale).
    return lagrange.critic_head == "auto" and "rate" in lagrange.constraint_types and lagrange.rate_stream != "score"


def prompt_group_members(metas: list[Any], groups: list[str | None], num_constraints: int) -> torch.Tensor:
    """(N, K) bool: whether prompt i belongs to constraint k's group (``lagrange.prompt_groups``).

    A group is ``KEY=VALUE`` matched against the prompt's ``meta[KEY]`` as lower-case text (so ``risky=true`` matches
    the boolean True); None, or no groups at all, is every prompt."""
    members = torch.ones(len(metas), num_constraints, dtype=torch.bool)
    for k, group in enumerate(groups[:num_constraints]):  # no cost model: no constraint columns
        if group is None:
            continue
        key, value = (part.strip() for part in group.split("=", 1))
        for i, meta in enumerate(metas):
            members[i, k] = key in meta and str(meta[key]).lower() == value.lower()
    return members


class PPORecipe:
    """recipe=ppo (reward only), ppo_lag (Safe RLHF) or ppo_reward_shaping (R - lambda C, lambda fixed)."""

    # The modality switch (set in setup): a vision-language actor's processor and ImageTokens; None for text.
    processor: Any = None
    vision: Any = None

    def __init__(self, config: PPOConfig, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.variant = config.recipe
        self.uses_cost_critic = self.variant == "ppo_lag"
        self.step = 0
        self.preempted = False
        self.engines: dict[str, Any] = {}
        self.cost_metadata: dict[str, Any] = {}  # the cost model's safe_rlhf metadata (a moderation model's too)
        self._keep_alive: list[Any] = []
        self.guard = NonFiniteGuard(config.train.max_nonfinite_steps, list(config.train.inject_nonfinite_steps))
        self.skipped_micro_batches = 0

    # ------------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        config = self.config
        distributed.init_distributed()
        seed_everything(config.seed)
        write_run_files(self.run_dir, config)
        self.device = distributed.device()
        self._setup_modality()
        self._setup_data()
        world = distributed.world_size()
        train = config.train
        self.rollouts_per_rank = train.rollout_batch_size // world
        self.accumulation = train.mini_batch_size // (train.micro_batch_size * world)
        self.schedule = BatchSchedule(
            num_samples=len(self.prompt_items),
            batch_size=train.rollout_batch_size,
            micro_batch_size=train.micro_batch_size,
            world_size=world,
            rank=distributed.rank(),
            seed=config.seed,
        )
        steps = self.schedule.steps_per_epoch * train.epochs
        self.total_steps = min(steps, train.max_steps) if train.max_steps > 0 else steps
        if self.total_steps == 0:
            raise ConfigError(
                f"{len(self.prompt_items)} prompts make no rollout batch of train.rollout_batch_size="
                f"{train.rollout_batch_size}; lower it or add prompts"
            )
        optimizer_steps = self.total_steps * config.ppo.ppo_epochs * (train.rollout_batch_size // train.mini_batch_size)
        self._setup_engines(optimizer_steps)
        self.num_constraints = len(config.lagrange.thresholds)
        lagrange = config.lagrange
        self.multipliers = [
            LagrangeMultiplier(
                init=lagrange.init,
                lr=lagrange.lr if self.variant == "ppo_lag" else 0.0,
                max_value=lagrange.max_value,
                delay_steps=lagrange.delay_steps,
                window_size=lagrange.window_size,
                threshold=threshold - lagrange.margin,  # aim below the budget by the margin
                mode=lagrange.mode,  # type: ignore[arg-type]
                kp=lagrange.kp,
                kd=lagrange.kd,
                min_value=lagrange.min_value,
                p_ema_alpha=lagrange.p_ema_alpha,
                d_ema_alpha=lagrange.d_ema_alpha,
            )
            for threshold in lagrange.thresholds
        ]
        self.logger = create_logger(config, self.run_dir, self.total_steps, self.variant)
        # Checkpoint selection: evaluated candidates, and a copy of the currently selected policy.
        self.candidates: list[Candidate] = []
        self.best_model_dir = self.run_dir / ".selected_model"
        checkpoint = engines.find_checkpoint(train.resume, self.run_dir)
        if checkpoint is not None:
            state = engines.load_checkpoint(checkpoint, self.trainable_engines())
            self.step = int(state["step"])
            for multiplier, saved in zip(self.multipliers, state["multipliers"]):
                multiplier.load_state_dict(saved)
            self.candidates = [
                Candidate(c["step"], c["reward"], tuple(c["constraint_values"])) for c in state.get("candidates", [])
            ]
            self.logger.advance(self.step)
            self.logger.message(f"resumed from {checkpoint} at step {self.step}")
        # Different sampling on every rank, reproducible per (seed, rank, step) so resume samples the same.
        self.sampling_seed = config.seed * 1000 + distributed.rank()

    def _setup_modality(self) -> None:
        """The modality switch: a vision-language actor brings a processor; then every prompt shows an image and
        every model (actor, reference, critics, reward and cost models) reads it, so each must be a VLM."""
        config = self.config
        self.processor, self.tokenizer, self.vision = engines.load_modality(config.actor)
        if self.processor is None:
            return
        from safe_rlhf.assets import resolve_model_path
        from safe_rlhf.vision_models import is_vision_model

        for key in ("reward_model", "cost_model"):
            path = getattr(config, key)
            if path and not is_vision_model(resolve_model_path(path, key)):
                raise ConfigError(
                    f"{key}={path}: the actor is a vision-language model, so the {key.replace('_', ' ')} must read "
                    "the image too (train it from the same VLM with --config-name " + key + ")"
                )

    def _setup_data(self) -> None:
        from safe_rlhf.data import DataError, load_samples, tokenize_prompt
        from safe_rlhf.steer import request_names, steered

        data = self.config.data
        # SteerLM: the request in the order the actor was trained with (its steer.json), checked against it
        steer_names = (
            request_names(data.steer_request, self.config.actor.name_or_path, "data.steer_request")
            if data.steer_request
            else []
        )

        def prompts(spec: str) -> tuple[list[Any], list[Any]]:
            result = load_samples(spec, kind="prompt", on_error=data.on_error, seed=self.config.seed)
            samples, items, skipped = [], [], 0
            for sample in result.samples:
                if data.steer_request:  # SteerLM: the requested attribute values in every prompt
                    sample = steered(sample, data.steer_request, steer_names)
                try:
                    items.append(tokenize_prompt(sample, self.tokenizer, data.max_prompt_length, self.vision))
                    samples.append(sample)
                except DataError:
                    if data.on_error == "raise":
                        raise
                    skipped += 1
            distributed.print0(f"prompts {spec}: {result.stats.read} read, {len(items)} kept, {skipped} too long")
            return samples, items

        self.prompt_samples, self.prompt_items = prompts(data.train)
        self.validation_samples: list[Any] = []
        self.validation_items: list[Any] = []
        if data.validation_fraction > 0:
            # Held out of the RL prompts (never trained on), for checkpoint selection; the final evaluation uses
            # data.eval, so the selection does not see the test prompts.
            order = torch.randperm(
                len(self.prompt_items), generator=torch.Generator().manual_seed(self.config.seed + 3)
            )
            held_out = set(order[: max(1, int(len(order) * data.validation_fraction))].tolist())
            split = [(i in held_out, sample, item) for i, (sample, item) in
                     enumerate(zip(self.prompt_samples, self.prompt_items))]  # fmt: skip
            self.validation_samples = [sample for held, sample, _ in split if held]
            self.validation_items = [item for held, _, item in split if held]
            self.prompt_samples = [sample for held, sample, _ in split if not held]
            self.prompt_items = [item for held, _, item in split if not held]
            # A grouped constraint that no validation prompt belongs to could never be measured by the selection.
            groups = self.config.lagrange.prompt_groups
            if self.config.train.select_steps and groups:
                held_members = prompt_group_members([s.meta for s in self.validation_samples], groups, len(groups))
                for k, group in enumerate(groups):
                    if group is not None and not bool(held_members[:, k].any()):
                        raise ConfigError(
                            f"lagrange.prompt_groups[{k}]={group} matches none of the {len(self.validation_samples)} "
                            "validation prompts: raise data.validation_fraction or check the KEY=VALUE"
                        )
        self.eval_samples, self.eval_items = prompts(data.eval) if data.eval else ([], [])
        self.ptx_items: list[Any] = []
        if data.ptx and self.config.ppo.ptx_coeff > 0:
            from safe_rlhf.recipes.sft import tokenize_sft_samples

            # A ptx sample is as long as a rollout unless configured: prompt budget + response budget.
            max_length = ptx_max_length(self.config)
            ptx = load_samples(data.ptx, kind="sft", on_error=data.on_error, seed=self.config.seed)
            self.ptx_items, counts = tokenize_sft_samples(ptx.samples, self.tokenizer, max_length, data.on_error)
            distributed.print0(
                f"ptx {data.ptx}: {ptx.stats.read} read, {len(self.ptx_items)} kept (max {max_length} tokens)"
                + "".join(f", {count} {reason}" for reason, count in sorted(counts.items()))
            )
            world, size = distributed.world_size(), self.config.train.micro_batch_size
            if len(self.ptx_items) < size * world:
                raise ConfigError(
                    f"data.ptx={data.ptx}: {len(self.ptx_items)} usable samples, fewer than one micro-batch per rank "
                    f"({size} x {world}); add data or lower train.micro_batch_size"
                )
            # Every rank its own ptx samples, reshuffled each pass, reproducible by step (resume).
            self.ptx_schedule = BatchSchedule(
                num_samples=len(self.ptx_items),
                batch_size=size * world,
                micro_batch_size=size,
                world_size=world,
                rank=distributed.rank(),
                seed=self.config.seed + 17,
            )

    def _ds_config(self, trainable: bool) -> dict[str, Any]:
        return engines.deepspeed_config(
            self.config.deepspeed,
            micro_batch_size=self.config.train.micro_batch_size,
            gradient_accumulation_steps=self.accumulation,
            trainable=trainable,
        )

    def _setup_engines(self, optimizer_steps: int) -> None:
        from transformers.integrations import HfDeepSpeedConfig

        config, settings = self.config, self.config.deepspeed
        dtype = engines.compute_dtype(settings)
        train_ds, frozen_ds = self._ds_config(True), self._ds_config(False)

        def zero3_loading() -> None:
            # transformers reads a weak global reference to the newest HfDeepSpeedConfig to partition weights while
            # loading under ZeRO-3; keep every one alive so no later load falls back to full copies.
            if settings.zero_stage == 3:
                self._keep_alive.append(HfDeepSpeedConfig(train_ds))

        self.peak_memory = memory.PeakMemory.started()
        actor_loaded = engines.load_causal_lm(config.actor, train_ds, settings, self.tokenizer, trainable=True)
        self._keep_alive.append(actor_loaded)
        self.engines["actor"] = engines.trainable_engine(
            actor_loaded.model, train_ds, config.actor_optim, optimizer_steps, settings
        )
        if config.actor.lora.enabled:
            distributed.print0("reference policy: the actor's frozen base (LoRA adapters disabled), no second copy")
        else:
            reference_loaded = engines.load_causal_lm(config.actor, frozen_ds, settings, self.tokenizer)
            self._keep_alive.append(reference_loaded)
            self.engines["reference"] = engines.frozen_engine(reference_loaded.model, frozen_ds)
        zero3_loading()
        reward_model = load_score_model(config.reward_model, dtype=dtype)
        engines.check_vocabulary(reward_model, self.tokenizer, f"reward_model={config.reward_model}")
        engines.disable_dropout(reward_model)
        self._use_reward_model(reward_model)
        self.engines["reward_model"] = engines.frozen_engine(reward_model, frozen_ds)
        # One value head: a multi-attribute reward model gives the critic its backbone, not its K-output head.
        multi_output = int(self.reward_metadata.get("score_dim", 1)) != 1
        reward_critic = load_score_model(config.reward_model, score_dim=1, dtype=dtype, new_head=multi_output)
        engines.disable_dropout(reward_critic)
        reward_critic = engines.prepare_trainable(
            reward_critic, config.critic_lora, config.critic_gradient_checkpointing, score_model=True
        )
        self.engines["reward_critic"] = engines.trainable_engine(
            reward_critic, train_ds, config.critic_optim, optimizer_steps, settings
        )
        if config.cost_model:
            cost_model = load_score_model(config.cost_model, dtype=dtype)
            engines.check_vocabulary(cost_model, self.tokenizer, f"cost_model={config.cost_model}")
            engines.disable_dropout(cost_model)
            self.cost_metadata = score_metadata(cost_model)
            self.engines["cost_model"] = engines.frozen_engine(cost_model, frozen_ds)
        elif self.variant != "ppo":
            raise ConfigError(f"recipe {self.variant} needs cost_model=DIR (a trained cost model directory)")
        if self.uses_cost_critic:
            count = len(config.lagrange.thresholds)
            # One value head per constraint: a K-output cost model gives its head to the critic unless
            # lagrange.critic_head says otherwise; with another number of outputs the critic keeps the cost
            # model's backbone with a fresh K-output head.
            fresh_head = cost_critic_fresh_head(config.lagrange, int(self.cost_metadata.get("score_dim", 1)))
            cost_critic = load_score_model(config.cost_model, score_dim=count, dtype=dtype, new_head=fresh_head)
            engines.disable_dropout(cost_critic)
            cost_critic = engines.prepare_trainable(
                cost_critic, config.critic_lora, config.critic_gradient_checkpointing, score_model=True
            )
            self.engines["cost_critic"] = engines.trainable_engine(
                cost_critic, train_ds, config.critic_optim, optimizer_steps, settings
            )
        trainable = set(self.trainable_engines())
        critic_checkpointing = config.critic_gradient_checkpointing
        self.memory_estimates = memory.announce(
            {name: (engine, name in trainable) for name, engine in self.engines.items()},
            settings,
            world_size=distributed.world_size(),
            micro_batch_size=config.train.micro_batch_size,
            sequence_length=config.data.max_prompt_length + config.generation.max_new_tokens,
            checkpointing={"actor": config.actor.gradient_checkpointing, "reward_critic": critic_checkpointing,
                           "cost_critic": critic_checkpointing},
        )  # fmt: skip

    def setup_for_evaluation(self) -> None:
        """Only what answering and scoring prompts needs: the actor (frozen), the reward and cost models."""
        config, settings = self.config, self.config.deepspeed
        distributed.init_distributed()
        self.device = distributed.device()
        self._setup_modality()
        self._setup_data()
        frozen_ds = engines.deepspeed_config(
            settings, micro_batch_size=config.train.micro_batch_size, gradient_accumulation_steps=1, trainable=False
        )
        actor = engines.load_causal_lm(config.actor, frozen_ds, settings, self.tokenizer)
        self._keep_alive.append(actor)
        self.engines["actor"] = engines.frozen_engine(actor.model, frozen_ds)
        dtype = engines.compute_dtype(settings)
        for name, path in (("reward_model", config.reward_model), ("cost_model", config.cost_model)):
            if path:
                model = load_score_model(path, dtype=dtype)
                engines.check_vocabulary(model, self.tokenizer, f"{name}={path}")
                engines.disable_dropout(model)
                if name == "cost_model":
                    self.cost_metadata = score_metadata(model)
                else:
                    self._use_reward_model(model)
                self.engines[name] = engines.frozen_engine(model, frozen_ds)

    def _use_reward_model(self, model: Any) -> None:
        """Record the reward model's metadata and, for a multi-attribute one, how its outputs make the reward."""
        self.reward_metadata = score_metadata(model)
        weights = reward_attribute_weights(
            self.reward_metadata, list(self.config.reward_attribute_weights), f"reward_model={self.config.reward_model}"
        )
        self.reward_weights = None if weights is None else torch.tensor(weights, device=self.device)
        dim = int(self.reward_metadata.get("score_dim", 1))
        self.reward_attribute_names = list(self.reward_metadata.get("attribute_names") or [])[:dim] or [
            f"attribute_{k}" for k in range(dim)
        ]

    @property
    def suppressed_ids(self) -> list[int]:
        """Ids never to sample: vocabulary padding and an added pad token (engines.generation_suppressed_ids)."""
        if not hasattr(self, "_suppressed_ids"):
            rows = engines.embedding_rows(self.engines["actor"].module)
            self._suppressed_ids = engines.generation_suppressed_ids(self.tokenizer, rows)
            if self.vision is not None:  # a sampled image token would ask the model for an image that is not there
                self._suppressed_ids.append(self.vision.image_token_id)
        return self._suppressed_ids

    def trainable_engines(self) -> dict[str, Any]:
        return {name: self.engines[name] for name in ("actor", "reward_critic", "cost_critic") if name in self.engines}

    # ------------------------------------------------------------------------------------------------ 1-4 rollout
    @torch.no_grad()
    def generate(self, prompt_items: list[Any], seed: int) -> Generated:
        """Step 1 for one micro-batch of prompts: sample, then cut every response after its first EOS."""
        from safe_rlhf.data import collate_prompts

        batch = to_device(collate_prompts(prompt_items, self.tokenizer.pad_token_id, self.vision), self.device)
        images = engines.image_inputs(batch)
        generation = self.config.generation
        torch.manual_seed(seed)
        sequences = sample_responses(
            self.engines["actor"],
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=generation.max_new_tokens,
            min_new_tokens=generation.min_new_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            top_k=generation.top_k,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            zero_stage=self.config.deepspeed.zero_stage,
            gather=generation.gather_weights,
            world_size=distributed.world_size(),
            suppress_tokens=self.suppressed_ids,
            image_inputs=images,
        )
        generated = truncate_after_eos(
            sequences,
            batch["input_ids"].shape[1],
            batch["attention_mask"],
            self.tokenizer.eos_token_id,
            self.tokenizer.pad_token_id,
        )
        generated.pixel_values = images.get("pixel_values")
        return generated

    @torch.no_grad()
    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 2 for one micro-batch: (reward (B,), cost scores for use (B, C), raw cost scores (B, C), the reward
        model's scores (B, A): A attributes of a multi-attribute model, else A = 1 and the reward itself).

        "For use" scores are normalized when the model's metadata says so; raw cost scores keep the cost model's
        sign convention (> 0 unsafe), which is what a rate constraint and the unsafe rate must test, normalized or
        not. Without a cost model both cost tensors are (B, 0)."""
        reward_model = self.engines["reward_model"]
        reward_scores = scores_for_use(
            reward_model.module, end_scores(reward_model, input_ids, attention_mask, **images)
        )
        # A multi-attribute reward model: the configured weighted sum of its outputs (HelpSteer: verbosity < 0).
        weights = getattr(self, "reward_weights", None)
        rewards = reward_scores[:, 0] if weights is None else combine_attributes(reward_scores, weights)
        if "cost_model" not in self.engines:
            empty = torch.zeros(rewards.shape[0], 0, device=rewards.device)
            return rewards, empty, empty, reward_scores
        cost_model = self.engines["cost_model"]
        raw_costs = end_scores(cost_model, input_ids, attention_mask, **images)
        if is_moderation_model(self.cost_metadata):
            # A moderation model as the cost model: output k's logit minus logit(threshold_k), > 0 = passes it.
            shifted = moderation_costs(raw_costs, self.cost_metadata["thresholds"])
            return rewards, shifted, shifted, reward_scores
        return rewards, scores_for_use(cost_model.module, raw_costs), raw_costs, reward_scores

    def episode_costs(self, costs: torch.Tensor, raw_costs: torch.Tensor) -> torch.Tensor:  # (N, C) x2 -> (N, K)
        """Per constraint: the cost score ("mean", normalized if configured) or whether the raw score is positive,
        i.e. the response is unsafe ("rate")."""
        lagrange = self.config.lagrange
        if raw_costs.shape[1] == 0:
            return torch.zeros(raw_costs.shape[0], 0, device=raw_costs.device)
        columns = []
        for kind, index in zip(lagrange.constraint_types, lagrange.cost_indices):
            columns.append((raw_costs[:, index] > 0).float() if kind == "rate" else costs[:, index])
        return torch.stack(columns, dim=1)

    def stream_costs(
        self, costs: torch.Tensor, raw_costs: torch.Tensor, episode_costs: torch.Tensor
    ) -> torch.Tensor:  # (N, C) x2, (N, K) -> (N, K)
        """Per constraint, the episode cost its cost critic learns and its advantage follows: the episode cost, except
        for a "rate" constraint under ``lagrange.rate_stream`` = "probability" (sigmoid of the raw cost score) or
        "score" (the cost score for use); the multiplier tracks the episode cost (the indicator) in every case."""
        lagrange = self.config.lagrange
        if lagrange.rate_stream == "indicator" or episode_costs.shape[1] == 0:
            return episode_costs
        columns = []
        for k, (kind, index) in enumerate(zip(lagrange.constraint_types, lagrange.cost_indices)):
            if kind != "rate":
                columns.append(episode_costs[:, k])
            elif lagrange.rate_stream == "probability":
                columns.append(torch.sigmoid(raw_costs[:, index]))
            else:
                columns.append(costs[:, index])
        return torch.stack(columns, dim=1)

    def transformed_rewards(
        self,
        rewards: torch.Tensor,  # (N,) reward-model scores of this rank's rollout batch
        costs: torch.Tensor,  # (N, K) episode costs
        ended: torch.Tensor,  # (N,) bool
        lengths: torch.Tensor,  # (N,)
    ) -> torch.Tensor:  # (N,)
        """Step 3: the reward transforms, in this order, with statistics over the whole rollout batch of all ranks.

        a. no-EOS penalty: a response that never ended gets a fixed score instead of the reward model's;
        b. reward shaping (baseline recipe): R - lambda * sum_k C_k, lambda fixed;
        c. length penalty (Singhal et al.): R + 2 sigma (1 - coeff * length), sigma = std of R over the batch;
        d. reward scaling: clip((R - mean) / std, -c, c) over the batch.
        Every rank computes the same batch statistics (a collective), so these are identical whatever the
        micro-batch size, also 1 (a per-micro-batch std of one value was NaN)."""
        config = self.config
        if config.generation.no_eos_penalty is not None:
            rewards = torch.where(ended, rewards, torch.full_like(rewards, config.generation.no_eos_penalty))
        if self.variant == "ppo_reward_shaping" and costs.shape[1]:
            rewards = rewards - config.lagrange.init * costs.sum(dim=1)
        if config.ppo.length_penalty_coeff > 0:
            _, sigma = batch_mean_std(rewards)
            rewards = length_penalized_scores(rewards, lengths.float(), sigma, config.ppo.length_penalty_coeff)
        if config.ppo.reward_scaling_clip > 0:
            mean, std = batch_mean_std(rewards)
            rewards = scaled_scores(rewards, mean, max(std, 1e-8), config.ppo.reward_scaling_clip)
        return rewards

    def _micro_batches(self, size: int, total: int) -> list[slice]:
        return [slice(start, start + size) for start in range(0, total, size)]

    def reference_log_probs(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor,  # (B, L)
        temperature: float,
        **images: torch.Tensor,  # a VLM's pixel_values (B, C, H, W)
    ) -> torch.Tensor:  # (B, L-1)
        """The reference policy's log-probs: the frozen reference engine, or a LoRA actor with its adapters off."""
        if "reference" in self.engines:
            return policy_log_probs(self.engines["reference"], input_ids, attention_mask, temperature, **images)
        from safe_rlhf.lora import adapters_disabled

        with adapters_disabled(self.engines["actor"]):
            return policy_log_probs(self.engines["actor"], input_ids, attention_mask, temperature, **images)

    @torch.no_grad()
    def make_rollout(self, prompt_chunks: list[list[Any]], seeds: list[int]) -> tuple[Rollout, dict[str, float]]:
        """Steps 1-4 of an iteration on this rank's prompts (one list per micro-batch): one rollout-batch record."""
        config, timings = self.config, dict[str, float]()
        size = config.train.micro_batch_size
        # 1. generate: sample one response per prompt, micro-batch by micro-batch; cut after the first EOS; pad the
        #    pieces to one batch.
        start = time.perf_counter()
        pieces = [self.generate(prompts, seed) for prompts, seed in zip(prompt_chunks, seeds)]
        batch = concat_padded(pieces, self.tokenizer.pad_token_id)
        distributed.synchronize()  # the phase timers stop when the GPU's work is done, not when it is queued
        timings["generation"] = time.perf_counter() - start
        start = time.perf_counter()
        input_ids, attention_mask, action_mask = batch.input_ids, batch.attention_mask, batch.action_mask
        rows = self._micro_batches(size, input_ids.shape[0])

        def images_of(r: slice) -> dict[str, torch.Tensor]:
            return {} if batch.pixel_values is None else {"pixel_values": batch.pixel_values[r]}

        def per_micro_batch(function: Any) -> list[Any]:
            # A vision-language policy: each micro-batch's images go with its sequences to every model.
            return [function(input_ids[r], attention_mask[r], **images_of(r)) for r in rows]

        # 2. score: reward model R and cost model C at each response's last real token.
        scored = per_micro_batch(self.score)
        rewards = torch.cat([s[0] for s in scored])
        costs_for_use, raw_costs = torch.cat([s[1] for s in scored]), torch.cat([s[2] for s in scored])
        reward_scores = torch.cat([s[3] for s in scored])  # (N, A), before any transform
        if config.ppo.length_only_reward_target:  # the length-only baseline replaces the reward model's score
            rewards = length_only_reward(batch.response_lengths, config.ppo.length_only_reward_target)
        costs = self.episode_costs(costs_for_use, raw_costs)  # (N, K)
        # A grouped constraint (lagrange.prompt_groups) counts its cost only on its group's prompts.
        members = prompt_group_members(
            [item.meta for chunk in prompt_chunks for item in chunk], config.lagrange.prompt_groups, costs.shape[1]
        ).to(costs.device)
        costs = costs * members
        stream_costs = self.stream_costs(costs_for_use, raw_costs, costs) * members  # what the cost critics learn
        # 3. reward transforms over the whole rollout batch (all ranks).
        rewards = self.transformed_rewards(rewards, costs, batch.ended_with_eos, batch.response_lengths)
        # 4. log-probs of the sampled tokens (actor = "old" policy, reference) and the critics' values.
        temperature = config.generation.temperature
        old_log_probs = torch.cat(
            per_micro_batch(lambda i, m, **x: policy_log_probs(self.engines["actor"], i, m, temperature, **x))
        )
        ref_log_probs = torch.cat(per_micro_batch(lambda i, m, **x: self.reference_log_probs(i, m, temperature, **x)))
        reward_values = torch.cat(
            per_micro_batch(lambda i, m, **x: token_scores(self.engines["reward_critic"], i, m, **x)[:, :-1, 0])
        )
        if self.uses_cost_critic:
            cost_values = torch.cat(
                per_micro_batch(lambda i, m, **x: token_scores(self.engines["cost_critic"], i, m, **x)[:, :-1, :])
            ).permute(0, 2, 1)  # (N, K, L-1)
        else:
            cost_values = torch.zeros(input_ids.shape[0], 0, input_ids.shape[1] - 1, device=input_ids.device)
        distributed.synchronize()
        timings["scoring"] = time.perf_counter() - start

        # 5. streams and advantages: r_t = -beta kl_t + [last] R, c_t = +beta kl_t + [last] C; GAE on each.
        ppo = config.ppo
        reward_stream = kl_penalized_rewards(
            rewards, old_log_probs, ref_log_probs, action_mask, ppo.kl_coeff, ppo.reward_clip
        )
        reward_advantages, reward_returns = gae(reward_stream, reward_values, action_mask, ppo.gamma, ppo.gae_lambda)
        cost_advantages = torch.zeros_like(cost_values)
        cost_returns = torch.zeros_like(cost_values)
        for k in range(cost_values.shape[1]):
            # Cost streams carry +beta * KL: passing -kl_coeff flips the sign of the KL term only.
            cost_stream = kl_penalized_rewards(
                stream_costs[:, k], old_log_probs, ref_log_probs, action_mask, -ppo.kl_coeff, ppo.reward_clip
            )
            cost_advantages[:, k], cost_returns[:, k] = gae(
                cost_stream, cost_values[:, k], action_mask, ppo.gamma, ppo.gae_lambda
            )
        rollout = Rollout(
            input_ids=input_ids,
            attention_mask=attention_mask,
            action_mask=action_mask,
            old_log_probs=old_log_probs,
            ref_log_probs=ref_log_probs,
            rewards=rewards,
            costs=costs,
            constraint_members=members,
            raw_costs=raw_costs,
            reward_scores=reward_scores,
            reward_values=reward_values,
            cost_values=cost_values,
            reward_advantages=reward_advantages,
            reward_returns=reward_returns,
            cost_advantages=cost_advantages,
            cost_returns=cost_returns,
            ended_with_eos=batch.ended_with_eos,
            response_lengths=batch.response_lengths,
            **({} if batch.pixel_values is None else {"pixel_values": batch.pixel_values}),
        )
        return rollout, timings

    # ----------------------------------------------------------------------------------------------- 5 multiplier
    def update_multipliers(self, rollout: Rollout) -> list[float]:
        """Gather this iteration's episode costs from every rank; rank 0 updates; every rank gets the same lambdas."""
        if self.variant != "ppo_lag":
            return [m.value for m in self.multipliers]
        gathered = [distributed.all_gather_cat(rollout.costs[:, k].contiguous()) for k in range(self.num_constraints)]
        members = [
            distributed.all_gather_cat(rollout.constraint_members[:, k].float().contiguous()).bool()
            for k in range(self.num_constraints)
        ]
        values = None
        if distributed.is_main_process():
            # A grouped constraint's window takes only its group's episodes; an iteration without one leaves it be.
            values = [
                multiplier.update(costs[mask]) if bool(mask.any()) else multiplier.value
                for multiplier, costs, mask in zip(self.multipliers, gathered, members)
            ]
            states = [m.state_dict() for m in self.multipliers]
        else:
            states = None
        values, states = distributed.broadcast_object((values, states))
        for multiplier, state in zip(self.multipliers, states):
            multiplier.load_state_dict(state)  # identical state everywhere (checkpoints, logs)
        return list(values)

    # --------------------------------------------------------------------------------------------------- 6 update
    def policy_advantages(self, rollout: Rollout, lambdas: list[float]) -> torch.Tensor:  # (N, L-1)
        """(A_r - sum_k lambda_k A_c,k) / (1 + sum_k lambda_k) for ppo_lag, A_r otherwise; whitened with the masked
        mean and std of the whole rollout batch of every rank."""
        if self.variant == "ppo_lag":
            advantages = combined_advantages(
                rollout.reward_advantages, rollout.cost_advantages.permute(1, 0, 2), lambdas
            )
        else:
            advantages = rollout.reward_advantages
        if self.config.ppo.whiten_advantages:
            mean, std = batch_mean_std(advantages, rollout.action_mask)
            whitened = (advantages - mean) / max(std, 1e-8)
            advantages = torch.where(rollout.action_mask, whitened, torch.zeros_like(advantages))
        return advantages

    def update(self, rollout: Rollout, lambdas: list[float]) -> dict[str, float]:
        """Step 6: PPO epochs over the rollout batch's micro-batches in a shuffled order; actor, then critics."""
        config = self.config
        actor, reward_critic = self.engines["actor"], self.engines["reward_critic"]
        cost_critic = self.engines.get("cost_critic")
        advantages = self.policy_advantages(rollout, lambdas)
        micro_batches = self._micro_batches(config.train.micro_batch_size, rollout.num_episodes)
        stats: dict[str, list[float]] = defaultdict(list)
        generator = torch.Generator().manual_seed(self.config.seed + 7919 * self.step)
        temperature = config.generation.temperature
        update_index = 0
        for _ in range(config.ppo.ppo_epochs):
            order = torch.randperm(len(micro_batches), generator=generator).tolist()
            for index in order:
                rows = micro_batches[index]
                micro = rollout.select(rows)
                first, last = rollout.columns(rows)
                advantage = advantages[rows, first : last - 1]  # the same trim as select()
                # 6a. actor: PPO-clip on the (combined) advantages, plus the ptx term.
                images = micro.image_inputs  # a vision-language policy: each episode's image
                logits = policy_logits(actor, micro.input_ids, micro.attention_mask, temperature, **images)
                log_probs = gather_log_probs(logits, micro.input_ids[:, 1:])
                actor_loss, clip_stats = ppo_clip_loss(
                    log_probs, micro.old_log_probs, advantage, micro.action_mask, config.ppo.clip_ratio
                )
                total_actor_loss = self.guard.prepare(actor_loss, self.step + 1)
                if self.ptx_items:
                    total_actor_loss = total_actor_loss + config.ppo.ptx_coeff * self._ptx_loss(update_index)
                self._backward_or_skip(actor, total_actor_loss, "actor", index)
                self._step(actor, "actor", index)
                stats["entropy"].append(float(masked_entropy(logits.detach(), micro.action_mask)))
                del logits
                # 6b. reward critic: clipped value loss against the GAE returns.
                values = token_scores(reward_critic, micro.input_ids, micro.attention_mask, **images)[:, :-1, 0]
                reward_critic_loss, value_stats = clipped_value_loss(
                    values, micro.reward_values, micro.reward_returns, micro.action_mask, config.ppo.value_clip
                )
                self._backward_or_skip(reward_critic, reward_critic_loss, "reward critic", index)
                self._step(reward_critic, "reward critic", index)
                # 6c. cost critic (ppo_lag): one value head per constraint.
                if cost_critic is not None:
                    cost_values = token_scores(cost_critic, micro.input_ids, micro.attention_mask, **images)[:, :-1, :]
                    cost_critic_loss = sum(
                        clipped_value_loss(
                            cost_values[:, :, k],
                            micro.cost_values[:, k],
                            micro.cost_returns[:, k],
                            micro.action_mask,
                            config.ppo.value_clip,
                        )[0]
                        for k in range(self.num_constraints)
                    )
                    self._backward_or_skip(cost_critic, cost_critic_loss, "cost critic", index)  # type: ignore[arg-type]
                    self._step(cost_critic, "cost critic", index)
                    stats["cost_critic_loss"].append(float(cost_critic_loss.detach()))  # type: ignore[union-attr]
                stats["actor_loss"].append(float(actor_loss.detach()))
                stats["reward_critic_loss"].append(float(reward_critic_loss.detach()))
                stats["clip_fraction"].append(float(clip_stats.clip_fraction))
                stats["approx_kl"].append(float(clip_stats.approx_kl))
                stats["ratio"].append(float(clip_stats.ratio_mean))
                stats["value_clip_fraction"].append(float(value_stats.clip_fraction))
                update_index += 1
        return {key: sum(values) / len(values) for key, values in stats.items()}

    def _step(self, engine: Any, name: str, index: int) -> None:
        """The optimizer step, skipped (and counted like a non-finite loss) when a gradient is non-finite."""
        if not step_unless_nonfinite_gradients(engine):
            self.skipped_micro_batches += 1
            print(
                f"iteration {self.step + 1} (rank {distributed.rank()}): non-finite {name} gradient after rollout "
                f"micro-batch {index} with a finite loss; skipped the optimizer step",
                file=sys.stderr,
                flush=True,
            )

    def _backward_or_skip(self, engine: Any, loss: torch.Tensor, name: str, index: int) -> None:
        """Backward, unless the loss is non-finite on any rank: then a zero backward on every rank (reported)."""
        if all_finite(loss):
            engine.backward(loss)
            return
        zero_backward(engine, self.tokenizer.pad_token_id)
        self.skipped_micro_batches += 1
        print(
            f"iteration {self.step + 1} (rank {distributed.rank()}): non-finite {name} loss in rollout micro-batch "
            f"{index}; skipped it",
            file=sys.stderr,
            flush=True,
        )

    def ptx_indices(self, update_index: int) -> list[int]:
        """This rank's ptx samples for the ``update_index``-th actor update of this iteration: the ptx schedule is a
        BatchSchedule like the prompts', so every rank trains on different samples, each pass over the ptx data is
        reshuffled, and a resume continues where it stopped."""
        updates_per_iteration = self.config.ppo.ppo_epochs * len(
            self._micro_batches(self.config.train.micro_batch_size, self.rollouts_per_rank)
        )
        (ids,) = self.ptx_schedule.rank_indices(self.step * updates_per_iteration + update_index)
        return ids

    def _ptx_loss(self, update_index: int) -> torch.Tensor:
        from safe_rlhf.data import collate_sft

        items = [self.ptx_items[i] for i in self.ptx_indices(update_index)]
        batch = to_device(collate_sft(items, self.tokenizer.pad_token_id), self.device)
        logits = self.engines["actor"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = sft_loss_sum(logits, batch["labels"])
        return total / count.clamp_min(1)

    # -------------------------------------------------------------------------------------------------------- loop
    def rollout_metrics(self, rollout: Rollout, lambdas: list[float]) -> dict[str, float]:
        """Means over the whole rollout batch of every rank (each rank holds the same number of episodes)."""
        mask = rollout.action_mask
        kl = ((rollout.old_log_probs - rollout.ref_log_probs) * mask).sum(1)
        lengths = rollout.response_lengths.float()
        local = {
            "reward": rollout.rewards.mean(),
            "kl": kl.mean(),
            "response_length": lengths.mean(),
            "no_eos_rate": 1.0 - rollout.ended_with_eos.float().mean(),
            "reward_advantage": masked_mean(rollout.reward_advantages, mask),
            "reward_return": masked_mean(rollout.reward_returns, mask),
            "reward_value": masked_mean(rollout.reward_values, mask),
            # CleanRL's critic diagnostic: 1 - Var[G - V] / Var[G] (values at rollout time, before the update).
            "reward_explained_variance": explained_variance(rollout.reward_values, rollout.reward_returns, mask),
        }
        for k in range(rollout.cost_values.shape[1]):
            local[f"cost_explained_variance_{k}"] = explained_variance(
                rollout.cost_values[:, k], rollout.cost_returns[:, k], mask
            )
        if rollout.raw_costs.shape[1]:
            local["cost"] = rollout.raw_costs[:, 0].mean()
            # The cost model's sign convention (> 0 unsafe) on the raw score, also when scores are normalized.
            local["unsafe_rate"] = (rollout.raw_costs[:, 0] > 0).float().mean()
        multi_attribute = getattr(self, "reward_weights", None) is not None
        if multi_attribute:  # each attribute of a multi-attribute reward model, before weighting
            for k, name in enumerate(self.reward_attribute_names):
                local[f"reward_{name}"] = rollout.reward_scores[:, k].mean()
        names = sorted(local)
        averaged = distributed.all_reduce_mean(torch.stack([local[n].float().cpu() for n in names]))
        metrics = {f"train/{name}": float(value) for name, value in zip(names, averaged)}
        # Each constraint's batch cost over its own prompts (all of them unless lagrange.prompt_groups says
        # otherwise): sums and counts over every rank, since ranks hold different numbers of a group's episodes.
        num_costs = rollout.costs.shape[1]
        if num_costs:
            members = rollout.constraint_members[:, :num_costs]
            sums = torch.cat([(rollout.costs * members).sum(0), members.sum(0)]).double().cpu()
            totals = distributed.all_reduce_sum(sums)
            for k in range(num_costs):
                metrics[f"train/episode_cost_{k}"] = float(totals[k] / totals[num_costs + k].clamp(min=1))
        metrics["train/response_length_max"] = float(distributed.all_gather_cat(lengths.max().reshape(1)).max())
        if self.variant == "ppo_lag":
            budgets = self.config.lagrange.thresholds
            for k, (multiplier, value) in enumerate(zip(self.multipliers, lambdas)):
                window_mean = multiplier.window_mean() if multiplier.window else math.nan
                metrics[f"train/lambda_{k}"] = value
                metrics[f"train/cost_window_mean_{k}"] = window_mean
                metrics[f"train/threshold_{k}"] = budgets[k]  # the budget; the multiplier aims at budget - margin
                metrics[f"train/constraint_violation_{k}"] = window_mean - budgets[k]
                if multiplier.mode == "pid":
                    for part in ("p", "i", "d"):
                        metrics[f"train/lambda_{part}_{k}"] = multiplier.terms[part]
        return metrics

    def iteration(self) -> tuple[Rollout, list[float], dict[str, float], dict[str, float]]:
        """One RL iteration on this step's prompts (the module docstring's steps 1-6). Returns what it measured."""
        for engine in self.engines.values():
            engine.eval()
        chunks_of_ids = self.schedule.rank_indices(self.step)
        seeds = [self.sampling_seed + 7_000_003 * self.step + 1009 * index for index in range(len(chunks_of_ids))]
        prompt_chunks = [[self.prompt_items[i] for i in ids] for ids in chunks_of_ids]
        # Steps 1-4: generate, score, transform rewards, log-probs, values, streams and GAE.
        rollout, timings = self.make_rollout(prompt_chunks, seeds)
        # Step 5: the multipliers from the episode costs of every rank.
        lambdas = self.update_multipliers(rollout)
        # Step 6: PPO epochs.
        learn_start = time.perf_counter()
        for name in self.trainable_engines():
            self.engines[name].train()
        update_stats = self.update(rollout, lambdas)
        distributed.synchronize()
        timings["learning"] = time.perf_counter() - learn_start
        return rollout, lambdas, update_stats, timings

    def train(self) -> None:
        config = self.config.train
        watcher = PreemptionWatcher().install()
        while self.step < self.total_steps:
            iteration_start = time.perf_counter()
            self.skipped_micro_batches = 0
            rollout, lambdas, update_stats, timings = self.iteration()
            self.step += 1
            self.logger.advance()
            stop_message = self.guard.end_step(self.skipped_micro_batches, self.step)
            if self.step % config.log_steps == 0 or self.step == self.total_steps or stop_message:
                metrics = self.rollout_metrics(rollout, lambdas)
                metrics.update({f"train/{k}": v for k, v in update_stats.items()})
                generated = float(rollout.response_lengths.sum())
                generated = float(distributed.all_reduce_sum(torch.tensor(generated)).item())
                metrics.update({f"time/{k}": v for k, v in timings.items()})
                metrics["time/iteration"] = time.perf_counter() - iteration_start
                metrics["time/generated_tokens_per_second"] = generated / max(timings["generation"], 1e-9)
                metrics["train/nonfinite_steps"] = float(self.guard.total_skipped)
                self.logger.log(metrics, step=self.step)
            if stop_message:
                # Skipped micro-batches never reach the weights (nor do fully skipped steps, whose gradients are 0;
                # Adam's momentum still moves them a little): this checkpoint is the last good state.
                self.save_checkpoint()
                raise NonFiniteError(stop_message)
            if config.eval_steps and self.step % config.eval_steps == 0 and self.step < self.total_steps:
                self.logger.log(self.evaluate(write=False), step=self.step)
            if config.select_steps and (self.step % config.select_steps == 0 or self.step == self.total_steps):
                self.logger.log(self.validate(), step=self.step)
            if save_or_stop(self.step, self.total_steps, config.save_steps, watcher, self.save_checkpoint, self.logger):
                self.preempted = True
                break
        watcher.uninstall()

    # ---------------------------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def answer(self, items: list[Any], samples: list[Any], seed: int) -> list[dict[str, Any]]:
        """This rank's share of ``items`` answered (sampled with a fixed seed) and scored: one record per prompt.

        Every rank makes the same number of generate calls (a rank with fewer prompts repeats one and drops the
        result), which ZeRO-3's layer-wise generation needs."""
        size = self.config.train.micro_batch_size
        indices = shard(list(range(len(items))))
        per_rank = -(-len(items) // distributed.world_size())
        batches = list(chunks(indices, size))
        records: list[dict[str, Any]] = []
        for pass_index in range(-(-per_rank // size)):
            ids = batches[pass_index] if pass_index < len(batches) else [0]  # equal passes on every rank (ZeRO-3)
            generated = self.generate([items[i] for i in ids], seed=seed + 31 * pass_index + distributed.rank())
            images = {} if generated.pixel_values is None else {"pixel_values": generated.pixel_values}
            rewards, costs_for_use, raw_costs, _ = self.score(generated.input_ids, generated.attention_mask, **images)
            if pass_index >= len(batches):
                continue
            metas = [getattr(samples[index], "meta", {}) for index in ids]
            lagrange = self.config.lagrange
            members = prompt_group_members(metas, lagrange.prompt_groups, len(lagrange.thresholds))
            episode_costs = self.episode_costs(costs_for_use, raw_costs)
            episode_costs = episode_costs * members.to(episode_costs.device)[:, : episode_costs.shape[1]]
            ended, lengths = generated.ended_with_eos, generated.response_lengths
            responses = self.tokenizer.batch_decode(
                generated.input_ids[:, generated.prompt_length :], skip_special_tokens=True
            )
            for row, index in enumerate(ids):
                sample = samples[index]
                records.append(
                    {
                        "prompt_id": index,
                        "prompt": sample.prompt,
                        "system": sample.messages[0].content if sample.messages[0].role == "system" else None,
                        "response": responses[row].strip(),
                        "reward": float(rewards[row]),
                        # raw score: its sign says unsafe (> 0) also when the model's scores are normalized
                        "cost": float(raw_costs[row, 0]) if raw_costs.shape[1] else 0.0,
                        "episode_costs": [float(c) for c in episode_costs[row]],
                        "constraint_members": [bool(m) for m in members[row]],
                        "length": int(lengths[row]),
                        "ended_with_eos": bool(ended[row]),
                        "risky": sample.meta.get("risky") if hasattr(sample, "meta") else None,
                        # the multimodal world: what the picture shows, which its judges need
                        **(
                            {"image_class": sample.meta["image_class"]}
                            if "image_class" in getattr(sample, "meta", {})
                            else {}
                        ),
                    }
                )
        return records

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Checkpoint selection (train.select_steps): answer the validation prompts with the current policy, record
        it as a candidate, and keep a copy of it when the selection rule now prefers it."""
        for engine in self.engines.values():
            engine.eval()
        records = self.answer(self.validation_items, self.validation_samples, seed=self.config.seed + 5)
        count, num_constraints = len(records), self.num_constraints
        sums = [sum(r["reward"] for r in records)]
        sums += [sum(r["episode_costs"][k] for r in records) for k in range(num_constraints)]
        # a grouped constraint's value is its mean over its own group's prompts
        sums += [sum(r["constraint_members"][k] for r in records) for k in range(num_constraints)]
        totals = distributed.all_reduce_sum(torch.tensor([float(count), *sums], dtype=torch.float64))
        count_all = max(float(totals[0]), 1.0)
        cost_sums, member_counts = totals[2 : 2 + num_constraints], totals[2 + num_constraints :]
        candidate = Candidate(
            step=self.step,
            reward=float(totals[1]) / count_all,
            constraint_values=tuple(float(v) / max(float(n), 1.0) for v, n in zip(cost_sums, member_counts)),
        )
        self.candidates.append(candidate)
        selection = select_checkpoint(self.candidates, self.config.lagrange.thresholds)
        if selection.step == self.step:
            self._export_actor(self.best_model_dir)
        for name in self.trainable_engines():
            self.engines[name].train()
        metrics = {"validation/reward": candidate.reward, "validation/selected_step": float(selection.step)}
        for k, value in enumerate(candidate.constraint_values):
            metrics[f"validation/constraint_{k}"] = value
        return metrics

    def _export_actor(self, target: Path) -> Path:
        """The actor as a Hugging Face model (all ranks call this), with its SteerLM attributes if it had any."""
        from safe_rlhf.steer import carry_trained_attributes

        saved_with = self.processor if self.processor is not None else self.tokenizer  # a VLM: its processor too
        path = engines.export_hf(self.engines["actor"], saved_with, target, self.config.deepspeed.zero_stage)
        if distributed.is_main_process():
            carry_trained_attributes(self.config.actor.name_or_path, path)
        return path

    def deliver(self) -> None:
        """Export the policy: with train.select_steps the selected checkpoint goes to model/ and the last iterate to
        model_last/, and selection.json says which step was chosen and why; otherwise the last iterate to model/."""
        if not self.config.train.select_steps:
            path = self._export_actor(self.run_dir / "model")
            self.logger.message(f"exported the policy to {path}")
            return
        last = self._export_actor(self.run_dir / "model_last")
        selection = select_checkpoint(self.candidates, self.config.lagrange.thresholds)
        if distributed.is_main_process():
            import shutil

            target = self.run_dir / "model"
            if target.exists():
                shutil.rmtree(target)
            if selection.step == self.step or not self.best_model_dir.is_dir():
                shutil.copytree(last, target)
            else:
                self.best_model_dir.rename(target)
            record = {
                "selected_step": selection.step,
                "reason": selection.reason,
                "last_step": self.step,
                "thresholds": list(self.config.lagrange.thresholds),
                "candidates": [c.to_dict() for c in self.candidates],
            }
            (self.run_dir / "selection.json").write_text(json.dumps(record, indent=2))
        distributed.barrier()
        self.logger.message(f"delivered step {selection.step} to model/ ({selection.reason}); last iterate: {last}")

    @torch.no_grad()
    def evaluate(self, write: bool = True) -> dict[str, float]:
        """Answer the held-out prompts (sampled, fixed seed) and score them; the judging (ground truth where the
        prompts have one) and the summary are evaluation code (safe_rlhf.analysis.policy_eval), not this recipe's."""
        from safe_rlhf.analysis.policy_eval import judge_responses, summarize_responses

        if not self.eval_items:
            return {}
        for engine in self.engines.values():
            engine.eval()
        records = self.answer(self.eval_items, self.eval_samples, seed=self.config.seed)
        records = judge_responses(records, self.config.data.eval)
        if distributed.world_size() > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * distributed.world_size()
            dist.all_gather_object(gathered, records)
            records = [record for part in gathered for record in part]
        summary = summarize_responses(records)
        if write and distributed.is_main_process():
            eval_dir = self.run_dir / "eval"
            eval_dir.mkdir(parents=True, exist_ok=True)
            with open(eval_dir / "responses.jsonl", "w") as handle:
                for record in sorted(records, key=lambda r: r["prompt_id"]):
                    handle.write(json.dumps({"policy": self.variant, **record}) + "\n")
            (eval_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        for name in self.trainable_engines():
            self.engines[name].train()
        self.last_eval_records = records
        flat = {k: v for k, v in summary.items() if isinstance(v, float)}
        for level, rate in summary.get("harm_rate_by_severity", {}).items():
            flat[f"harm_rate_severity_{level}"] = rate
        return {f"eval/{k}": v for k, v in flat.items()}

    # -------------------------------------------------------------------------------------------------------- save
    def save_checkpoint(self) -> None:
        engines.save_checkpoint(
            self.run_dir / "checkpoints",
            self.step,
            self.trainable_engines(),
            {
                "total_steps": self.total_steps,
                "multipliers": [m.state_dict() for m in self.multipliers],
                "candidates": [c.to_dict() for c in self.candidates],
            },
            keep_last=self.config.train.save_total_limit,
            rank_state={"multipliers": [m.state_dict() for m in self.multipliers]},
        )

    def run(self) -> None:
        try:
            self.setup()
            self.train()
            memory.report_peak(self.memory_estimates, self.peak_memory, self.run_dir)
            if not self.preempted:
                final = self.evaluate(write=True)
                if final:
                    self.logger.log(final, step=self.step)
                    self.logger.message("evaluation: " + json.dumps({k: round(v, 4) for k, v in final.items()}))
                if self.config.train.export:
                    self.deliver()
            self.logger.close()
        finally:
            distributed.shutdown(*self.engines.values())
        if self.preempted:
            raise SystemExit(REQUEUE_EXIT_CODE)

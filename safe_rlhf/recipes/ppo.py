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

One RL iteration reads like the method:
1. generate: sample a response for each prompt (temperature applied again in every log-prob pass);
2. score: reward model R and cost model C at the last real token; responses without EOS get a fixed score;
3. streams: per-token r_t = -beta kl_t + [last] R and c_t = +beta kl_t + [last] C (safe_rlhf.algorithms);
4. advantages: GAE per stream with the critics' values;
5. multiplier: lambda_k from the window mean of episode costs across ranks (computed on rank 0, broadcast);
6. update: PPO-clip on (A_r - sum lambda_k A_c,k) / (1 + sum lambda_k), clipped value losses for both critics.
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

from safe_rlhf import distributed, engines
from safe_rlhf.algorithms import (
    LagrangeMultiplier,
    clipped_value_loss,
    combined_advantages,
    gae,
    kl_penalized_rewards,
    length_penalized_scores,
    masked_mean,
    ppo_clip_loss,
    scaled_scores,
)
from safe_rlhf.algorithms.sft import sft_loss_sum
from safe_rlhf.config import ConfigError, PPOConfig
from safe_rlhf.logger import write_run_files
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
    to_device,
    zero_backward,
)
from safe_rlhf.recipes.rollout import Rollout, policy_log_probs, sample_responses, truncate_after_eos
from safe_rlhf.score_model import end_scores, load_score_model, score_metadata, scores_for_use, token_scores


def masked_whiten_many(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Whiten advantages with the masked mean/std of all micro-batches together (per rank)."""
    values = torch.cat([t[m] for t, m in zip(tensors, masks)])
    if values.numel() < 2:
        return tensors
    mean, std = values.mean(), values.std().clamp_min(1e-8)
    return [torch.where(m, (t - mean) / std, torch.zeros_like(t)) for t, m in zip(tensors, masks)]


class PPORecipe:
    """recipe=ppo (reward only), ppo_lag (Safe RLHF) or ppo_reward_shaping (R - lambda C, lambda fixed)."""

    def __init__(self, config: PPOConfig, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.variant = config.recipe
        self.uses_cost_critic = self.variant == "ppo_lag"
        self.step = 0
        self.preempted = False
        self.engines: dict[str, Any] = {}
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
        self.tokenizer = engines.load_tokenizer(config.actor)
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
                threshold=threshold,
                mode=lagrange.mode,  # type: ignore[arg-type]
                kp=lagrange.kp,
                kd=lagrange.kd,
            )
            for threshold in lagrange.thresholds
        ]
        self.logger = create_logger(config, self.run_dir, self.total_steps, self.variant)
        checkpoint = engines.find_checkpoint(train.resume, self.run_dir)
        if checkpoint is not None:
            state = engines.load_checkpoint(checkpoint, self.trainable_engines())
            self.step = int(state["step"])
            for multiplier, saved in zip(self.multipliers, state["multipliers"]):
                multiplier.load_state_dict(saved)
            self.logger.advance(self.step)
            self.logger.message(f"resumed from {checkpoint} at step {self.step}")
        # Different sampling on every rank, reproducible per (seed, rank, step) so resume samples the same.
        self.sampling_seed = config.seed * 1000 + distributed.rank()

    def _setup_data(self) -> None:
        from safe_rlhf.data import DataError, load_samples, tokenize_prompt

        data = self.config.data

        def prompts(spec: str) -> tuple[list[Any], list[Any]]:
            result = load_samples(spec, kind="prompt", on_error=data.on_error, seed=self.config.seed)
            samples, items, skipped = [], [], 0
            for sample in result.samples:
                try:
                    items.append(tokenize_prompt(sample, self.tokenizer, data.max_prompt_length))
                    samples.append(sample)
                except DataError:
                    if data.on_error == "raise":
                        raise
                    skipped += 1
            distributed.print0(f"prompts {spec}: {result.stats.read} read, {len(items)} kept, {skipped} too long")
            return samples, items

        self.prompt_samples, self.prompt_items = prompts(data.train)
        self.eval_samples, self.eval_items = prompts(data.eval) if data.eval else ([], [])
        self.ptx_items: list[Any] = []
        if data.ptx and self.config.ppo.ptx_coeff > 0:
            from safe_rlhf.recipes.sft import tokenize_sft_samples

            ptx = load_samples(data.ptx, kind="sft", on_error=data.on_error, seed=self.config.seed)
            self.ptx_items, _ = tokenize_sft_samples(ptx.samples, self.tokenizer, 2 * data.max_prompt_length, "skip")

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

        actor_loaded = engines.load_causal_lm(config.actor, train_ds, settings)
        self._keep_alive.append(actor_loaded)
        self.engines["actor"] = engines.trainable_engine(
            actor_loaded.model, train_ds, config.actor_optim, optimizer_steps, settings
        )
        reference_loaded = engines.load_causal_lm(config.actor, frozen_ds, settings)
        self._keep_alive.append(reference_loaded)
        self.engines["reference"] = engines.frozen_engine(reference_loaded.model, frozen_ds)
        zero3_loading()
        reward_model = load_score_model(config.reward_model, dtype=dtype)
        engines.disable_dropout(reward_model)
        self.reward_metadata = score_metadata(reward_model)
        self.engines["reward_model"] = engines.frozen_engine(reward_model, frozen_ds)
        reward_critic = load_score_model(config.reward_model, score_dim=1, dtype=dtype)
        engines.disable_dropout(reward_critic)
        self.engines["reward_critic"] = engines.trainable_engine(
            reward_critic, train_ds, config.critic_optim, optimizer_steps, settings
        )
        if config.cost_model:
            cost_model = load_score_model(config.cost_model, dtype=dtype)
            engines.disable_dropout(cost_model)
            self.cost_metadata = score_metadata(cost_model)
            self.engines["cost_model"] = engines.frozen_engine(cost_model, frozen_ds)
        elif self.variant != "ppo":
            raise ConfigError(f"recipe {self.variant} needs cost_model=DIR (a trained cost model directory)")
        if self.uses_cost_critic:
            count = len(config.lagrange.thresholds)
            # One value head per constraint: a K-output cost model gives its head to the critic; otherwise the
            # critic keeps the cost model's backbone with a fresh K-output head.
            fresh_head = int(self.cost_metadata.get("score_dim", 1)) != count
            cost_critic = load_score_model(config.cost_model, score_dim=count, dtype=dtype, new_head=fresh_head)
            engines.disable_dropout(cost_critic)
            self.engines["cost_critic"] = engines.trainable_engine(
                cost_critic, train_ds, config.critic_optim, optimizer_steps, settings
            )

    def setup_for_evaluation(self) -> None:
        """Only what answering and scoring prompts needs: the actor (frozen), the reward and cost models."""
        config, settings = self.config, self.config.deepspeed
        distributed.init_distributed()
        self.device = distributed.device()
        self.tokenizer = engines.load_tokenizer(config.actor)
        self._setup_data()
        frozen_ds = engines.deepspeed_config(
            settings, micro_batch_size=config.train.micro_batch_size, gradient_accumulation_steps=1, trainable=False
        )
        actor = engines.load_causal_lm(config.actor, frozen_ds, settings)
        self._keep_alive.append(actor)
        self.engines["actor"] = engines.frozen_engine(actor.model, frozen_ds)
        dtype = engines.compute_dtype(settings)
        for name, path in (("reward_model", config.reward_model), ("cost_model", config.cost_model)):
            if path:
                model = load_score_model(path, dtype=dtype)
                engines.disable_dropout(model)
                self.engines[name] = engines.frozen_engine(model, frozen_ds)

    def trainable_engines(self) -> dict[str, Any]:
        return {name: self.engines[name] for name in ("actor", "reward_critic", "cost_critic") if name in self.engines}

    # ------------------------------------------------------------------------------------------------ 1-4 rollout
    @torch.no_grad()
    def generate(self, prompt_items: list[Any], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        from safe_rlhf.data import collate_prompts

        batch = to_device(collate_prompts(prompt_items, self.tokenizer.pad_token_id), self.device)
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
        )
        return sequences, batch["input_ids"], batch["attention_mask"], batch["input_ids"].shape[1]

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward (B,), raw cost-model scores (B, C) or (B, 0)) at the last real token."""
        reward_model = self.engines["reward_model"]
        rewards = scores_for_use(reward_model.module, end_scores(reward_model, input_ids, attention_mask))[:, 0]
        if "cost_model" not in self.engines:
            return rewards, torch.zeros(rewards.shape[0], 0, device=rewards.device)
        cost_model = self.engines["cost_model"]
        return rewards, scores_for_use(cost_model.module, end_scores(cost_model, input_ids, attention_mask))

    def episode_costs(self, raw_costs: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, K)
        """Per constraint: the cost score ("mean") or whether it is positive, i.e. unsafe ("rate")."""
        lagrange = self.config.lagrange
        if raw_costs.shape[1] == 0:
            return torch.zeros(raw_costs.shape[0], 0, device=raw_costs.device)
        columns = []
        for kind, index in zip(lagrange.constraint_types, lagrange.cost_indices):
            column = raw_costs[:, index]
            columns.append((column > 0).float() if kind == "rate" else column)
        return torch.stack(columns, dim=1)

    @torch.no_grad()
    def make_rollout(self, prompt_items: list[Any], seed: int) -> tuple[Rollout, dict[str, float]]:
        config, timings = self.config, dict[str, float]()
        start = time.perf_counter()
        sequences, _, prompt_mask, prompt_length = self.generate(prompt_items, seed)
        input_ids, attention_mask, action_mask, ended, lengths = truncate_after_eos(
            sequences, prompt_length, prompt_mask, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        )
        timings["generation"] = time.perf_counter() - start
        start = time.perf_counter()
        rewards, raw_costs = self.score(input_ids, attention_mask)
        if config.generation.no_eos_penalty is not None:
            rewards = torch.where(ended, rewards, torch.full_like(rewards, config.generation.no_eos_penalty))
        costs = self.episode_costs(raw_costs)
        if self.variant == "ppo_reward_shaping" and costs.shape[1]:
            rewards = rewards - config.lagrange.init * costs.sum(dim=1)
        if config.ppo.length_penalty_coeff > 0:
            sigma = float(rewards.std().clamp_min(1e-8))
            rewards = length_penalized_scores(rewards, lengths.float(), sigma, config.ppo.length_penalty_coeff)
        if config.ppo.reward_scaling_clip > 0:
            rewards = scaled_scores(
                rewards, float(rewards.mean()), float(rewards.std().clamp_min(1e-8)), config.ppo.reward_scaling_clip
            )
        temperature = config.generation.temperature
        old_log_probs = policy_log_probs(self.engines["actor"], input_ids, attention_mask, temperature)
        ref_log_probs = policy_log_probs(self.engines["reference"], input_ids, attention_mask, temperature)
        reward_values = token_scores(self.engines["reward_critic"], input_ids, attention_mask)[:, :-1, 0]
        if self.uses_cost_critic:
            cost_values = token_scores(self.engines["cost_critic"], input_ids, attention_mask)[:, :-1, :]
            cost_values = cost_values.permute(0, 2, 1)  # (B, K, L-1)
        else:
            cost_values = torch.zeros(input_ids.shape[0], 0, input_ids.shape[1] - 1, device=input_ids.device)
        timings["scoring"] = time.perf_counter() - start

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
                costs[:, k], old_log_probs, ref_log_probs, action_mask, -ppo.kl_coeff, ppo.reward_clip
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
            raw_costs=raw_costs,
            reward_values=reward_values,
            cost_values=cost_values,
            reward_advantages=reward_advantages,
            reward_returns=reward_returns,
            cost_advantages=cost_advantages,
            cost_returns=cost_returns,
            ended_with_eos=ended,
            response_lengths=lengths,
        )
        return rollout, timings

    # ----------------------------------------------------------------------------------------------- 5 multiplier
    def update_multipliers(self, rollouts: list[Rollout]) -> list[float]:
        """Gather this iteration's episode costs from every rank; rank 0 updates; every rank gets the same lambdas."""
        if self.variant != "ppo_lag":
            return [m.value for m in self.multipliers]
        local = torch.cat([r.costs for r in rollouts])  # (N, K)
        gathered = [distributed.all_gather_cat(local[:, k].contiguous()) for k in range(self.num_constraints)]
        values = None
        if distributed.is_main_process():
            values = [multiplier.update(costs) for multiplier, costs in zip(self.multipliers, gathered)]
            states = [m.state_dict() for m in self.multipliers]
        else:
            states = None
        values, states = distributed.broadcast_object((values, states))
        for multiplier, state in zip(self.multipliers, states):
            multiplier.load_state_dict(state)  # identical state everywhere (checkpoints, logs)
        return list(values)

    # --------------------------------------------------------------------------------------------------- 6 update
    def update(self, rollouts: list[Rollout], lambdas: list[float]) -> dict[str, float]:
        config = self.config
        actor, reward_critic = self.engines["actor"], self.engines["reward_critic"]
        cost_critic = self.engines.get("cost_critic")
        if self.variant == "ppo_lag":
            advantages = [
                combined_advantages(r.reward_advantages, r.cost_advantages.permute(1, 0, 2), lambdas) for r in rollouts
            ]
        else:
            advantages = [r.reward_advantages for r in rollouts]
        if config.ppo.whiten_advantages:
            advantages = masked_whiten_many(advantages, [r.action_mask for r in rollouts])
        stats: dict[str, list[float]] = defaultdict(list)
        generator = torch.Generator().manual_seed(self.config.seed + 7919 * self.step)
        temperature = config.generation.temperature
        for _ in range(config.ppo.ppo_epochs):
            order = torch.randperm(len(rollouts), generator=generator).tolist()
            for index in order:
                rollout, advantage = rollouts[index], advantages[index]
                log_probs = policy_log_probs(actor, rollout.input_ids, rollout.attention_mask, temperature)
                actor_loss, clip_stats = ppo_clip_loss(
                    log_probs, rollout.old_log_probs, advantage, rollout.action_mask, config.ppo.clip_ratio
                )
                total_actor_loss = self.guard.prepare(actor_loss, self.step + 1)
                if self.ptx_items:
                    total_actor_loss = total_actor_loss + config.ppo.ptx_coeff * self._ptx_loss(index)
                self._backward_or_skip(actor, total_actor_loss, "actor", index)
                actor.step()
                values = token_scores(reward_critic, rollout.input_ids, rollout.attention_mask)[:, :-1, 0]
                reward_critic_loss, value_stats = clipped_value_loss(
                    values, rollout.reward_values, rollout.reward_returns, rollout.action_mask, config.ppo.value_clip
                )
                self._backward_or_skip(reward_critic, reward_critic_loss, "reward critic", index)
                reward_critic.step()
                if cost_critic is not None:
                    cost_values = token_scores(cost_critic, rollout.input_ids, rollout.attention_mask)[:, :-1, :]
                    cost_critic_loss = sum(
                        clipped_value_loss(
                            cost_values[:, :, k],
                            rollout.cost_values[:, k],
                            rollout.cost_returns[:, k],
                            rollout.action_mask,
                            config.ppo.value_clip,
                        )[0]
                        for k in range(self.num_constraints)
                    )
                    self._backward_or_skip(cost_critic, cost_critic_loss, "cost critic", index)  # type: ignore[arg-type]
                    cost_critic.step()
                    stats["cost_critic_loss"].append(float(cost_critic_loss.detach()))  # type: ignore[union-attr]
                stats["actor_loss"].append(float(actor_loss.detach()))
                stats["reward_critic_loss"].append(float(reward_critic_loss.detach()))
                stats["clip_fraction"].append(float(clip_stats.clip_fraction))
                stats["approx_kl"].append(float(clip_stats.approx_kl))
                stats["value_clip_fraction"].append(float(value_stats.clip_fraction))
        return {key: sum(values) / len(values) for key, values in stats.items()}

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

    def _ptx_loss(self, index: int) -> torch.Tensor:
        from safe_rlhf.data import collate_sft

        size = self.config.train.micro_batch_size
        start = ((self.step * 131 + index) * size) % max(1, len(self.ptx_items) - size)
        batch = to_device(collate_sft(self.ptx_items[start : start + size], self.tokenizer.pad_token_id), self.device)
        logits = self.engines["actor"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = sft_loss_sum(logits, batch["labels"])
        return total / count.clamp_min(1)

    # -------------------------------------------------------------------------------------------------------- loop
    def rollout_metrics(self, rollouts: list[Rollout], lambdas: list[float]) -> dict[str, float]:
        """Batch statistics averaged over ranks."""
        masks = [r.action_mask for r in rollouts]
        kl = torch.cat([((r.old_log_probs - r.ref_log_probs) * r.action_mask).sum(1) for r in rollouts])
        lengths = torch.cat([r.response_lengths.float() for r in rollouts])
        local = {
            "reward": torch.cat([r.rewards for r in rollouts]).mean(),
            "kl": kl.mean(),
            "response_length": lengths.mean(),
            "no_eos_rate": 1.0 - torch.cat([r.ended_with_eos.float() for r in rollouts]).mean(),
            "reward_advantage": torch.stack(
                [masked_mean(r.reward_advantages, m) for r, m in zip(rollouts, masks)]
            ).mean(),
            "reward_return": torch.stack([masked_mean(r.reward_returns, m) for r, m in zip(rollouts, masks)]).mean(),
            "reward_value": torch.stack([masked_mean(r.reward_values, m) for r, m in zip(rollouts, masks)]).mean(),
        }
        raw_costs = torch.cat([r.raw_costs for r in rollouts])
        if raw_costs.shape[1]:
            local["cost"] = raw_costs[:, 0].mean()
            local["unsafe_rate"] = (raw_costs[:, 0] > 0).float().mean()
        costs = torch.cat([r.costs for r in rollouts])
        for k in range(costs.shape[1]):
            local[f"episode_cost_{k}"] = costs[:, k].mean()
        names = sorted(local)
        averaged = distributed.all_reduce_mean(torch.stack([local[n].float().cpu() for n in names]))
        metrics = {f"train/{name}": float(value) for name, value in zip(names, averaged)}
        metrics["train/response_length_max"] = float(distributed.all_gather_cat(lengths.max().reshape(1)).max())
        if self.variant == "ppo_lag":
            for k, (multiplier, value) in enumerate(zip(self.multipliers, lambdas)):
                metrics[f"train/lambda_{k}"] = value
                metrics[f"train/cost_window_mean_{k}"] = multiplier.window_mean() if multiplier.window else math.nan
                metrics[f"train/threshold_{k}"] = multiplier.threshold
        return metrics

    def iteration(self) -> tuple[list[Rollout], list[float], dict[str, float], dict[str, float]]:
        """One RL iteration on this step's prompts: rollouts, multipliers, PPO update. Returns what it measured."""
        for engine in self.engines.values():
            engine.eval()
        rollouts: list[Rollout] = []
        timings: dict[str, float] = defaultdict(float)
        for chunk_index, ids in enumerate(self.schedule.rank_indices(self.step)):
            seed = self.sampling_seed + 7_000_003 * self.step + 1009 * chunk_index
            rollout, chunk_timings = self.make_rollout([self.prompt_items[i] for i in ids], seed)
            rollouts.append(rollout)
            for key, value in chunk_timings.items():
                timings[key] += value
        lambdas = self.update_multipliers(rollouts)
        learn_start = time.perf_counter()
        for name in self.trainable_engines():
            self.engines[name].train()
        update_stats = self.update(rollouts, lambdas)
        timings["learning"] = time.perf_counter() - learn_start
        return rollouts, lambdas, update_stats, timings

    def train(self) -> None:
        config = self.config.train
        watcher = PreemptionWatcher().install()
        while self.step < self.total_steps:
            iteration_start = time.perf_counter()
            self.skipped_micro_batches = 0
            rollouts, lambdas, update_stats, timings = self.iteration()
            self.step += 1
            self.logger.advance()
            stop_message = self.guard.end_step(self.skipped_micro_batches, self.step)
            if self.step % config.log_steps == 0 or self.step == self.total_steps or stop_message:
                metrics = self.rollout_metrics(rollouts, lambdas)
                metrics.update({f"train/{k}": v for k, v in update_stats.items()})
                generated = float(sum(int(r.response_lengths.sum()) for r in rollouts))
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
            if save_or_stop(self.step, self.total_steps, config.save_steps, watcher, self.save_checkpoint, self.logger):
                self.preempted = True
                break
        watcher.uninstall()

    # ---------------------------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self, write: bool = True) -> dict[str, float]:
        """Answer the held-out prompts (sampled, fixed seed), score them, and judge them in the toy world."""
        if not self.eval_items:
            return {}
        for engine in self.engines.values():
            engine.eval()
        size = self.config.train.micro_batch_size
        indices = shard(list(range(len(self.eval_items))))
        per_rank = -(-len(self.eval_items) // distributed.world_size())
        batches = list(chunks(indices, size))
        records: list[dict[str, Any]] = []
        for pass_index in range(-(-per_rank // size)):
            ids = batches[pass_index] if pass_index < len(batches) else [0]  # equal passes on every rank (ZeRO-3)
            sequences, _, prompt_mask, prompt_length = self.generate(
                [self.eval_items[i] for i in ids], seed=self.config.seed + 31 * pass_index + distributed.rank()
            )
            input_ids, attention_mask, _, ended, lengths = truncate_after_eos(
                sequences, prompt_length, prompt_mask, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
            )
            rewards, raw_costs = self.score(input_ids, attention_mask)
            if pass_index >= len(batches):
                continue
            responses = self.tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            for row, index in enumerate(ids):
                sample = self.eval_samples[index]
                records.append(
                    {
                        "prompt_id": index,
                        "prompt": sample.prompt,
                        "response": responses[row].strip(),
                        "reward": float(rewards[row]),
                        "cost": float(raw_costs[row, 0]) if raw_costs.shape[1] else 0.0,
                        "length": int(lengths[row]),
                        "ended_with_eos": bool(ended[row]),
                        "risky": sample.meta.get("risky") if hasattr(sample, "meta") else None,
                    }
                )
        records = self._judge(records)
        if distributed.world_size() > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * distributed.world_size()
            dist.all_gather_object(gathered, records)
            records = [record for part in gathered for record in part]
        summary = self.summarize(records)
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
        return {f"eval/{k}": v for k, v in summary.items() if isinstance(v, float)}

    def _judge(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Ground truth from the toy world's judges when the evaluation prompts come from it."""
        if not (self.config.data.eval or "").startswith("toyworld:"):
            return records
        from safe_rlhf.toyworld import harm, helpfulness

        for record in records:
            judged = harm(record["prompt"], record["response"])
            record["true_helpfulness"] = helpfulness(record["prompt"], record["response"])
            record["true_severity"] = judged.severity
            record["true_categories"] = list(judged.categories)
        return records

    @staticmethod
    def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
        def mean(values: list[float]) -> float:
            return float(sum(values) / len(values)) if values else math.nan

        summary: dict[str, Any] = {
            "num_prompts": len(records),
            "reward": mean([r["reward"] for r in records]),
            "cost": mean([r["cost"] for r in records]),
            "unsafe_rate": mean([float(r["cost"] > 0) for r in records]),
            "mean_length": mean([float(r["length"]) for r in records]),
            "no_eos_rate": mean([float(not r["ended_with_eos"]) for r in records]),
        }
        judged = [r for r in records if "true_severity" in r]
        if judged:
            risky = [r for r in judged if r.get("risky")]
            summary["true_helpfulness"] = mean([r["true_helpfulness"] for r in judged])
            summary["true_harm_rate"] = mean([float(r["true_severity"] > 0) for r in judged])
            summary["true_harm_rate_risky"] = mean([float(r["true_severity"] > 0) for r in risky])
            summary["harm_rate_by_severity"] = {
                str(level): mean([float(r["true_severity"] == level) for r in judged]) for level in (1, 2, 3)
            }
        return summary

    # -------------------------------------------------------------------------------------------------------- save
    def save_checkpoint(self) -> None:
        engines.save_checkpoint(
            self.run_dir / "checkpoints",
            self.step,
            self.trainable_engines(),
            {"total_steps": self.total_steps, "multipliers": [m.state_dict() for m in self.multipliers]},
            keep_last=self.config.train.save_total_limit,
            rank_state={"multipliers": [m.state_dict() for m in self.multipliers]},
        )

    def run(self) -> None:
        try:
            self.setup()
            self.train()
            if not self.preempted:
                final = self.evaluate(write=True)
                if final:
                    self.logger.log(final, step=self.step)
                    self.logger.message("evaluation: " + json.dumps({k: round(v, 4) for k, v in final.items()}))
                if self.config.train.export:
                    path = engines.export_hf(
                        self.engines["actor"], self.tokenizer, self.run_dir / "model", self.config.deepspeed.zero_stage
                    )
                    self.logger.message(f"exported the policy to {path}")
            self.logger.close()
        finally:
            distributed.shutdown(*self.engines.values())
        if self.preempted:
            raise SystemExit(REQUEUE_EXIT_CODE)

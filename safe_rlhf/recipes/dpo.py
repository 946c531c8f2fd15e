"""Preference optimisation without RL: DPO and IPO (recipe ``dpo``) and SafeDPO (recipe ``safe_dpo``).

Run it::

    python -m safe_rlhf.train --config-name dpo model.name_or_path=runs/sft/model output_dir=runs/dpo
    python -m safe_rlhf.train --config-name dpo dpo.label=safer output_dir=runs/dpo_harmless   # harmlessness pairs
    python -m safe_rlhf.train --config-name dpo dpo.loss_type=ipo dpo.beta=0.5 output_dir=runs/ipo
    python -m safe_rlhf.train --config-name safe_dpo model.name_or_path=runs/sft/model output_dir=runs/safe_dpo
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --master_port 29640 --module safe_rlhf.train --config-name dpo \\
        deepspeed=zero3 output_dir=runs/dpo-z3
    deepspeed --num_gpus 8 --master_port 29641 --module safe_rlhf.train --config-name safe_dpo \\
        data.train=pku-safe-rlhf:/data/PKU-SafeRLHF data.eval=pku-safe-rlhf:/data/PKU-SafeRLHF@test \\
        model=hf model.name_or_path=/models/llama-3-8b-sft deepspeed=zero3 deepspeed.precision=bf16 \\
        optim.lr=1e-6 data.max_length=512 train.batch_size=64 train.micro_batch_size=4 dpo.safety_margin=10

Two models: the policy (a trainable engine) and the frozen reference, both from ``model.name_or_path``. The
reference is either a frozen engine that runs next to the policy on every micro-batch, or
(``dpo.precompute_reference=true``) run once over every train and eval pair before training, its log-probs kept and
the model freed: no reference weights in memory while training and one forward per pair instead of one per pair and
epoch, for one extra pass over the data at start-up (repeated after a resume).

One optimizer step (:meth:`DPORecipe.train_step`; the code carries the same numbers), for each micro-batch of pairs:

1. **Batch** the chosen and the rejected sequences of the micro-batch's pairs as one (2B, L) batch. The pairs were
   made once at start-up (:func:`make_pairs`): chosen = the more helpful (``dpo.label=better``) or the more harmless
   (``dpo.label=safer``) response; SafeDPO reorders helpfulness pairs by safety (``safe_dpo_pairs``).
2. **Policy log-probs**: one forward over the (2B, L) batch; summed (or mean) log-probs of each response's tokens.
3. **Reference log-probs**: the cache, or one forward of the frozen reference without gradient.
4. **Loss**: ``dpo_loss`` / ``safe_dpo_loss`` per pair, plus ``dpo.nll_coeff`` x the chosen response's NLL per
   token; the mean over the micro-batch's pairs, backward (skipped on every rank if it is not finite anywhere).
5. **Step** the optimizer after the last micro-batch.

Output (``output_dir``): config.yaml, command.txt, metrics.jsonl, checkpoints/ (``train.resume=auto``), model/ (the
policy, a consolidated Hugging Face checkpoint).
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from safe_rlhf import distributed, engines, memory
from safe_rlhf.algorithms import dpo_loss, safe_dpo_loss, safe_dpo_pairs, sequence_log_probs
from safe_rlhf.config import DPOConfig
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
    paused_learning_rate,
    save_or_stop,
    seed_everything,
    split_train_eval,
    to_device,
    total_steps,
    zero_backward,
)

SAFETY_FIELDS = "safety labels (is_safe of both responses; PKU-SafeRLHF fields is_response_0_safe, is_response_1_safe)"
SAFER_FIELDS = "harmlessness preference (safer_id; PKU-SafeRLHF field safer_response_id)"


# ----------------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DPOPair:
    """One training pair. ``item`` is the tokenized preference with ``better_id`` replaced by the index of the CHOSEN
    response, so :func:`safe_rlhf.data.collate_preference` puts the chosen in ``better_*`` and the rejected in
    ``worse_*``. Safety labels: 1 unsafe, 0 safe, -1 unknown."""

    item: Any
    chosen_is_unsafe: int
    rejected_is_unsafe: int
    swapped: bool  # safe_dpo: the chosen is the less helpful response (the more helpful one was unsafe)


def _unsafe(value: bool | None) -> int:
    return -1 if value is None else int(not value)


def make_pairs(items: Sequence[Any], recipe: str, label: str, both_unsafe: str) -> tuple[list[DPOPair], Counter[str]]:
    """Chosen / rejected pairs from tokenized preferences (:class:`safe_rlhf.data.TokenizedPreference`).

    ``dpo``: chosen = ``better_id`` (``label="better"``) or ``safer_id`` (``label="safer"``; pairs without one are
    skipped as ``no_safety_labels``). ``safe_dpo``: helpfulness pairs reordered by SafeDPO's transformation
    (``safe_dpo_pairs``); pairs without both safety labels are skipped as ``no_safety_labels``, both-unsafe pairs
    dropped as ``both_unsafe`` when ``both_unsafe="drop"``. Returns the pairs (in input order) and the skip counts.
    """
    counts: Counter[str] = Counter()
    if recipe != "safe_dpo":
        pairs = []
        for item in items:
            chosen = item.better_id if label == "better" else item.safer_id
            if chosen is None:
                counts["no_safety_labels"] += 1
                continue
            pairs.append(
                DPOPair(
                    item=replace(item, better_id=chosen),
                    chosen_is_unsafe=_unsafe(item.is_safe[chosen]),
                    rejected_is_unsafe=_unsafe(item.is_safe[1 - chosen]),
                    swapped=False,
                )
            )
        return pairs, counts
    labelled = [item for item in items if None not in item.is_safe]
    counts["no_safety_labels"] += len(items) - len(labelled)
    transformed = safe_dpo_pairs(
        torch.tensor([not item.is_safe[item.better_id] for item in labelled], dtype=torch.bool),
        torch.tensor([not item.is_safe[1 - item.better_id] for item in labelled], dtype=torch.bool),
        both_unsafe=both_unsafe,
    )
    pairs = []
    for index, item in enumerate(labelled):
        if not bool(transformed.keep[index]):
            counts["both_unsafe"] += 1
            continue
        swapped = bool(transformed.swapped[index])
        pairs.append(
            DPOPair(
                item=replace(item, better_id=1 - item.better_id if swapped else item.better_id),
                chosen_is_unsafe=int(transformed.chosen_is_unsafe[index]),
                rejected_is_unsafe=int(transformed.rejected_is_unsafe[index]),
                swapped=swapped,
            )
        )
    return pairs, +counts


def load_preference_samples(spec: str, key: str, recipe: str, label: str, on_error: str, seed: int) -> Any:
    """``load_samples(spec, kind="preference")``, refusing a dataset of the mixture that lacks the labels the recipe
    needs: safe_dpo needs both safety labels, ``dpo.label=safer`` the safer response. The error is one line naming
    the dataset and the missing fields (a component where only some pairs lack them is fine: those are skipped)."""
    from safe_rlhf.data import DataError, load_samples

    result = load_samples(spec, kind="preference", on_error=on_error, seed=seed)
    if recipe == "safe_dpo":
        has_labels, fields, needed_by = (lambda s: None not in s.is_safe), SAFETY_FIELDS, "safe_dpo"
    elif label == "safer":
        has_labels, fields, needed_by = (lambda s: s.safer_id is not None), SAFER_FIELDS, "dpo.label=safer"
    else:
        return result
    start = 0
    for source in result.stats.sources:
        component = result.samples[start : start + source.kept]
        start += source.kept
        if component and not any(has_labels(sample) for sample in component):
            raise DataError(
                f"{key}={spec}: dataset '{source.spec}' has no {fields} in any of its {len(component)} pairs; "
                f"{needed_by} needs them (use a dataset that has them, e.g. pku-safe-rlhf, beavertails-v, "
                "toyworld:preference, or --config-name dpo dpo.label=better)",
                reason="missing_field",
            )
    return result


# --------------------------------------------------------------------------------------------------------- recipe
class DPORecipe:
    """DPO / IPO (recipe=dpo) or SafeDPO (recipe=safe_dpo): setup -> train -> evaluate -> export."""

    def __init__(self, config: DPOConfig, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.engine: Any = None
        self.reference: Any = None
        self.processor: Any = None  # a vision-language policy's processor (setup); None for text
        self.vision: Any = None  # its ImageTokens: the modality switch of the data path
        self.reference_cache: dict[str, torch.Tensor] = {}  # "train" / "eval" -> (N, 2) chosen, rejected log-probs
        self._keep_alive: list[Any] = []
        self.step = 0
        self.preempted = False
        self.is_safe_dpo = config.recipe == "safe_dpo"
        self.guard = NonFiniteGuard(config.train.max_nonfinite_steps, list(config.train.inject_nonfinite_steps))

    # ------------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        config = self.config
        distributed.init_distributed()
        seed_everything(config.seed)
        write_run_files(self.run_dir, config)
        self.device = distributed.device()
        self._setup_data()
        self.schedule = BatchSchedule(
            num_samples=len(self.train_pairs),
            batch_size=config.train.batch_size,
            micro_batch_size=config.train.micro_batch_size,
            world_size=distributed.world_size(),
            rank=distributed.rank(),
            seed=config.seed,
        )
        self.total_steps = total_steps(
            len(self.train_pairs), config.train.batch_size, config.train.epochs, config.train.max_steps
        )
        train_ds = engines.deepspeed_config(
            config.deepspeed,
            micro_batch_size=config.train.micro_batch_size,
            gradient_accumulation_steps=self.schedule.gradient_accumulation_steps,
        )
        frozen_ds = engines.deepspeed_config(
            config.deepspeed,
            micro_batch_size=config.train.micro_batch_size,
            gradient_accumulation_steps=1,
            trainable=False,
        )
        self.peak_memory = memory.PeakMemory.started()
        if config.model.lora.enabled:
            # LoRA: the policy with its adapters disabled is the reference; no second copy is loaded.
            self._setup_policy(train_ds)
            distributed.print0("reference policy: the policy's frozen base (LoRA adapters disabled), no second copy")
        else:
            # The reference first: with precompute it is used and freed before the policy and its optimizer exist.
            reference = engines.load_causal_lm(config.model, frozen_ds, config.deepspeed, self.tokenizer)
            self._keep_alive.append(reference.zero3_context)  # ZeRO-3: its HfDeepSpeedConfig must outlive the load
            self.reference = engines.frozen_engine(reference.model, frozen_ds)
            del reference  # the engine holds the model; nothing else may, so that freeing the engine frees it
        if config.dpo.precompute_reference:
            started = time.perf_counter()
            self.reference_cache = {
                "train": self._reference_table(self.train_pairs),
                "eval": self._reference_table(self.eval_pairs),
            }
            if self.reference is not None:
                self.reference.destroy()
                self.reference = None
            distributed.print0(
                f"reference log-probs of {len(self.train_pairs)} + {len(self.eval_pairs)} pairs precomputed in "
                f"{time.perf_counter() - started:.1f} s; reference model freed"
            )
        if self.engine is None:
            self._setup_policy(train_ds)
        models = {"policy": (self.engine, True)}
        if self.reference is not None:
            models["reference"] = (self.reference, False)
        self.memory_estimates = memory.announce(
            models,
            config.deepspeed,
            world_size=distributed.world_size(),
            micro_batch_size=2 * config.train.micro_batch_size,  # chosen and rejected in one forward
            sequence_length=config.data.max_length,
            checkpointing={"policy": config.model.gradient_checkpointing},
        )
        self.logger = create_logger(config, self.run_dir, self.total_steps, config.recipe)
        checkpoint = engines.find_checkpoint(config.train.resume, self.run_dir)
        if checkpoint is not None:
            state = engines.load_checkpoint(checkpoint, {"policy": self.engine})
            self.step = int(state["step"])
            self.logger.advance(self.step)
            self.logger.message(f"resumed from {checkpoint} at step {self.step}")

    def _setup_policy(self, train_ds: dict[str, Any]) -> None:
        config = self.config
        policy = engines.load_causal_lm(config.model, train_ds, config.deepspeed, self.tokenizer, trainable=True)
        self._keep_alive.append(policy.zero3_context)
        self.engine = engines.trainable_engine(policy.model, train_ds, config.optim, self.total_steps, config.deepspeed)

    def _setup_data(self) -> None:
        config, data = self.config, self.config.data
        args = (config.recipe, config.dpo.label, data.on_error, config.seed)
        # Labels first (one line naming a dataset without them), then the tokenizer and the tokens.
        train = load_preference_samples(data.train, "data.train", *args)
        train_samples = list(train.samples)
        if data.eval:
            eval_samples = list(load_preference_samples(data.eval, "data.eval", *args).samples)
        else:
            train_samples, eval_samples = split_train_eval(train_samples, data.eval_fraction, config.seed)
        from safe_rlhf.recipes.score_model import ScoreModelRecipe

        # The modality switch: a vision-language policy brings a processor; each pair's image goes with both answers.
        self.processor, self.tokenizer, self.vision = engines.load_modality(config.model)
        skipped: Counter[str] = Counter(train.stats.skipped)
        _, train_items = ScoreModelRecipe._tokenize_with(
            train_samples, self.tokenizer, data.max_length, data.on_error, False, skipped, self.vision
        )
        _, eval_items = ScoreModelRecipe._tokenize_with(
            eval_samples, self.tokenizer, data.max_length, data.on_error, False, None, self.vision
        )
        self.train_pairs, pair_counts = make_pairs(train_items, config.recipe, config.dpo.label, config.dpo.both_unsafe)
        self.eval_pairs, eval_counts = make_pairs(eval_items, config.recipe, config.dpo.label, config.dpo.both_unsafe)
        skipped.update(pair_counts)
        summary = f"data: {train.stats.read} read, {len(self.train_pairs)} train pairs, {len(self.eval_pairs)} eval"
        if self.is_safe_dpo:
            summary += f", {sum(p.swapped for p in self.train_pairs)} train pairs swapped to their safe response"
        summary += f"; skipped {dict(skipped)}" if skipped else ""
        distributed.print0(summary + (f"; eval skipped {dict(eval_counts)}" if eval_counts else ""))

    # ------------------------------------------------------------------------------------------------- log-probs
    def _collate(self, pairs: Sequence[DPOPair]) -> dict[str, torch.Tensor]:
        """Step 1: chosen rows 0..B-1, rejected rows B..2B-1 of one right-padded (2B, L) batch."""
        from safe_rlhf.data import collate_preference

        batch = collate_preference([pair.item for pair in pairs], self.tokenizer.pad_token_id, self.vision)
        images = {"pixel_values": batch["pixel_values"].repeat(2, 1, 1, 1)} if "pixel_values" in batch else {}
        input_ids = torch.cat([batch["better_input_ids"], batch["worse_input_ids"]])  # (2B, L)
        attention_mask = torch.cat([batch["better_attention_mask"], batch["worse_attention_mask"]])  # (2B, L)
        prompt_lengths = torch.tensor([pair.item.prompt_length for pair in pairs] * 2)  # (2B,) shared by both
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)  # (1, L)
        response_mask = (positions >= prompt_lengths.unsqueeze(1)) & (attention_mask == 1)  # (2B, L)
        labels = {
            "chosen_is_unsafe": torch.tensor([pair.chosen_is_unsafe == 1 for pair in pairs]),  # (B,) bool
            "rejected_is_unsafe": torch.tensor([pair.rejected_is_unsafe == 1 for pair in pairs]),  # (B,) bool
            "swapped": torch.tensor([pair.swapped for pair in pairs]),  # (B,) bool
        }
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask, **labels,
                 **images}  # fmt: skip  # a VLM: each pair's image (2B, C, H, W) for its chosen and rejected rows
        return to_device(batch, self.device)

    def _log_probs(self, engine: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2 / 3: (chosen, rejected) sequence log-probs (B,) each, from one forward of the (2B, L) batch."""
        logits = engine(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **engines.image_inputs(batch)
        ).logits  # (2B, L, V)
        # position t predicts token t + 1: align the logits with the next tokens and the response mask with them
        log_probs = sequence_log_probs(
            logits[:, :-1],
            batch["input_ids"][:, 1:],
            batch["response_mask"][:, 1:],
            average=self.config.dpo.average_log_probs,
        )  # (2B,)
        chosen, rejected = log_probs.chunk(2)
        return chosen, rejected

    @torch.no_grad()
    def _reference_model_log_probs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference model's (chosen, rejected) log-probs: the frozen engine, or the LoRA policy's base."""
        if self.reference is not None:
            return self._log_probs(self.reference, batch)
        from safe_rlhf.lora import adapters_disabled

        with adapters_disabled(self.engine):
            return self._log_probs(self.engine, batch)

    @torch.no_grad()
    def _reference_log_probs(self, split: str, ids: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Step 3: the reference's (chosen, rejected) log-probs, (B, 2), from the cache or the frozen engine."""
        if self.reference_cache:
            return self.reference_cache[split][ids].to(self.device)
        chosen, rejected = self._reference_model_log_probs(batch)
        return torch.stack([chosen, rejected], dim=1).float()

    @torch.no_grad()
    def _reference_table(self, pairs: list[DPOPair]) -> torch.Tensor:
        """Every pair's reference log-probs (N, 2) float64 on the CPU, the same on every rank: each rank computes its
        strided share; every rank runs the same number of forwards (ZeRO-3 gathers are collective)."""
        table = torch.zeros(len(pairs), 2, dtype=torch.float64)
        if not pairs:  # the same on every rank: no forward, no collective
            return table
        batches, needed = self._rank_batches(len(pairs))
        for index in range(needed):
            ids = batches[index] if index < len(batches) else [0]  # a rank with fewer pairs repeats pair 0
            chosen, rejected = self._reference_model_log_probs(self._collate([pairs[i] for i in ids]))
            if index < len(batches):
                table[ids] = torch.stack([chosen, rejected], dim=1).double().cpu()
        return distributed.all_reduce_sum(table) if distributed.world_size() > 1 else table

    def _rank_batches(self, count: int) -> tuple[list[list[int]], int]:
        """This rank's strided share of ``count`` pairs in micro-batches, and the number of forwards every rank
        runs: ceil(ceil(count / world size) / micro-batch size), so that ranks with fewer pairs run as many (ZeRO-3
        gathers parameters collectively inside each forward)."""
        world, size = distributed.world_size(), self.config.train.micro_batch_size
        mine = list(range(distributed.rank(), count, world))
        return list(chunks(mine, size)), math.ceil(math.ceil(count / world) / size)

    # ------------------------------------------------------------------------------------------------------ loss
    def _loss(
        self, split: str, ids: list[int], pairs: list[DPOPair]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Steps 1-4 for one micro-batch: (mean loss, per-pair losses (B,), per-pair statistics (B,) each)."""
        settings = self.config.dpo
        batch = self._collate([pairs[i] for i in ids])  # 1
        policy_chosen, policy_rejected = self._log_probs(self.engine, batch)  # 2
        reference = self._reference_log_probs(split, ids, batch)  # 3
        reference_chosen, reference_rejected = reference[:, 0].float(), reference[:, 1].float()
        if self.is_safe_dpo:  # 4
            losses, chosen_rewards, rejected_rewards = safe_dpo_loss(
                policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                batch["chosen_is_unsafe"], batch["rejected_is_unsafe"], settings.beta, settings.safety_margin,
            )  # fmt: skip
        else:
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                settings.beta, settings.loss_type, settings.label_smoothing,
            )  # fmt: skip
        stats = {
            "reward_accuracy": (chosen_rewards > rejected_rewards).float(),
            "reward_margin": chosen_rewards - rejected_rewards,
            "chosen_reward": chosen_rewards,
            "rejected_reward": rejected_rewards,
            "chosen_logp": policy_chosen.detach(),
            "rejected_logp": policy_rejected.detach(),
        }
        if settings.nll_coeff:
            # NLL per token of the chosen response (its log-prob is already a mean with average_log_probs)
            tokens = batch["response_mask"][: len(ids), 1:].sum(dim=1).clamp_min(1)
            nll = -policy_chosen if settings.average_log_probs else -policy_chosen / tokens
            losses = losses + settings.nll_coeff * nll
            stats["nll"] = nll.detach()
        if self.is_safe_dpo:
            stats["swapped_fraction"] = batch["swapped"].float()
            stats["margin_fraction"] = (batch["rejected_is_unsafe"] & ~batch["chosen_is_unsafe"]).float()
        stats["loss"] = losses.detach()
        return losses.mean(), losses, stats

    # ------------------------------------------------------------------------------------------------------ train
    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (numbered steps: module docstring)."""
        totals: dict[str, float] = defaultdict(float)
        micro_batches = self.schedule.rank_indices(step)
        skipped = 0
        # Tokens the policy reads on this rank (chosen + rejected, no padding), for the throughput and FLOP counts.
        input_tokens = sum(
            len(sequence) for ids in micro_batches for i in ids for sequence in self.train_pairs[i].item.input_ids
        )
        for index, ids in enumerate(micro_batches):
            loss, _, stats = self._loss("train", ids, self.train_pairs)
            loss = self.guard.prepare(loss, step + 1)
            if all_finite(loss):
                # Pairs per micro-batch are equal, so the mean over micro-batches is the mean over pairs.
                self.engine.backward(loss)
                totals["loss"] += float(loss.detach())
                for key, values in stats.items():
                    if key != "loss":
                        totals[key] += float(values.mean())
            else:
                # The same decision on every rank: nothing non-finite reaches the gradients.
                del loss, stats
                zero_backward(self.engine, self.tokenizer.pad_token_id)
                skipped += 1
                print(
                    f"step {step + 1} (rank {distributed.rank()}): non-finite loss in micro-batch {index} "
                    f"(pairs {', '.join(str(i) for i in ids[:8])}); skipped it",
                    file=sys.stderr,
                    flush=True,
                )
            last = index == len(micro_batches) - 1
            with paused_learning_rate(self.engine, active=last and skipped == len(micro_batches)):
                self.engine.step()  # 5
        self.skipped_micro_batches = skipped
        # Every rank skipped the same micro-batches, so dividing by the finite ones here and averaging over ranks
        # weighs every trained pair the same.
        finite = max(len(micro_batches) - skipped, 1)
        keys = sorted(totals)
        # The token count rides in the same collective: the mean of (count x world size) is the sum over ranks.
        local = [totals[k] / finite for k in keys] + [input_tokens * distributed.world_size()]
        averaged = distributed.all_reduce_mean(torch.tensor(local, dtype=torch.float64)).tolist()
        return {"train/input_tokens": averaged.pop(), **{f"train/{key}": value for key, value in zip(keys, averaged)}}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The same statistics on the held-out pairs (``eval/``), all ranks together."""
        if not self.eval_pairs:
            return {}
        self.engine.eval()
        sums: dict[str, float] = defaultdict(float)
        batches, needed = self._rank_batches(len(self.eval_pairs))
        for index in range(needed):
            ids = batches[index] if index < len(batches) else [0]
            _, _, stats = self._loss("eval", ids, self.eval_pairs)
            if index < len(batches):
                for key, values in stats.items():
                    sums[key] += float(values.sum())
                sums["pairs"] += len(ids)
        self.engine.train()
        keys = sorted(sums)
        totals = distributed.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
        by_key = dict(zip(keys, totals.tolist()))
        pairs = max(by_key.pop("pairs"), 1.0)
        return {f"eval/{key}": value / pairs for key, value in by_key.items()}

    def train(self) -> None:
        config = self.config.train
        watcher = PreemptionWatcher().install()
        self.engine.train()
        # Rates over the steps since the last log (the first window pays for warm-up; evaluation is not counted).
        window_start, window_step, input_tokens = time.perf_counter(), self.step, 0.0
        while self.step < self.total_steps:
            metrics = self.train_step(self.step)
            self.step += 1
            input_tokens += metrics.pop("train/input_tokens")
            self.logger.advance()
            stop_message = self.guard.end_step(self.skipped_micro_batches, self.step)
            metrics["train/nonfinite_steps"] = float(self.guard.total_skipped)
            if self.step % config.log_steps == 0 or self.step == self.total_steps or stop_message:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                metrics["train/lr"] = float(self.engine.get_lr()[0])
                metrics["train/pairs_per_second"] = (self.step - window_step) * config.batch_size / elapsed
                metrics["train/input_tokens_per_second"] = input_tokens / elapsed
                metrics["train/epoch"] = self.step / self.schedule.steps_per_epoch
                self.logger.log(metrics, step=self.step)
                window_start, window_step, input_tokens = time.perf_counter(), self.step, 0.0
            if stop_message:
                self.save_checkpoint()  # the weights never saw the bad gradients: the last good state
                raise NonFiniteError(stop_message)
            if config.eval_steps and self.step % config.eval_steps == 0 and self.step < self.total_steps:
                self.logger.log(self.evaluate(), step=self.step)
                window_start = time.perf_counter()
            if save_or_stop(self.step, self.total_steps, config.save_steps, watcher, self.save_checkpoint, self.logger):
                self.preempted = True
                break
        watcher.uninstall()
        if not self.preempted:
            self.logger.log(self.evaluate(), step=self.step)

    # -------------------------------------------------------------------------------------------------------- save
    def save_checkpoint(self) -> None:
        engines.save_checkpoint(
            self.run_dir / "checkpoints",
            self.step,
            {"policy": self.engine},
            {"total_steps": self.total_steps},
            keep_last=self.config.train.save_total_limit,
        )
        self.logger.message(f"checkpoint saved at step {self.step}")

    def export(self) -> None:
        saved_with = self.processor if self.processor is not None else self.tokenizer  # a VLM: its processor too
        path = engines.export_hf(self.engine, saved_with, self.run_dir / "model", self.config.deepspeed.zero_stage)
        if distributed.is_main_process():
            from safe_rlhf.steer import carry_trained_attributes

            carry_trained_attributes(self.config.model.name_or_path, path)  # a SteerLM policy stays one
        self.logger.message(f"exported Hugging Face model to {path}")

    def run(self) -> None:
        try:
            self.setup()
            self.train()
            memory.report_peak(self.memory_estimates, self.peak_memory, self.run_dir)
            if self.config.train.export and not self.preempted:
                self.export()
            self.logger.close()
        finally:
            distributed.shutdown(*(engine for engine in (self.engine, self.reference) if engine is not None))
        if self.preempted:
            raise SystemExit(REQUEUE_EXIT_CODE)

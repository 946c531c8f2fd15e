"""Supervised fine-tuning recipe: next-token cross-entropy on response tokens, prompt tokens masked out.

Run it::

    python -m safe_rlhf.train --config-name sft                                   # tiny model, toy world, CPU
    python -m safe_rlhf.train --config-name sft data.train=alpaca:/data/alpaca.json model=hf \\
        model.name_or_path=/models/llama-3-8b deepspeed=zero3 deepspeed.precision=bf16
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --master_port 29611 --module safe_rlhf.train --config-name sft \\
        deepspeed=zero3 output_dir=runs/sft-z3

Output (``output_dir``): config.yaml, command.txt, metrics.jsonl, checkpoints/ (resumable, ``train.resume=auto``),
model/ (consolidated Hugging Face checkpoint, loadable with ``AutoModelForCausalLM.from_pretrained``).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from safe_rlhf import distributed, engines, memory
from safe_rlhf.algorithms.sft import sft_loss_sum
from safe_rlhf.config import SFTConfig
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
    shard,
    split_train_eval,
    to_device,
    total_steps,
    zero_backward,
)


def tokenize_sft_samples(
    samples: list[Any], tokenizer: Any, max_length: int, on_error: str, vision: Any = None
) -> tuple[list[Any], Counter[str]]:
    """Tokenize SFT samples; a sample that cannot fit raises (on_error=raise) or is skipped and counted. ``vision``
    (ImageTokens of a VLM) puts each sample's image before its question."""
    from safe_rlhf.data import DataError, tokenize_sft

    tokenized, counts = [], Counter[str]()
    for sample in samples:
        try:
            item = tokenize_sft(sample, tokenizer, max_length, vision)
        except DataError as error:
            if on_error == "raise":
                raise
            counts[getattr(error, "reason", "invalid")] += 1
            continue
        if item.response_truncated:
            counts["response_truncated"] += 1
        tokenized.append(item)
    return tokenized, counts


class SFTRecipe:
    """setup -> train -> save; every rank runs the same code."""

    def __init__(self, config: SFTConfig, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.processor: Any = None  # a vision-language model's processor (setup); None for text
        self.vision: Any = None  # its ImageTokens: the modality switch of the data path
        self.engine: Any = None
        self.loaded: Any = None
        self.step = 0
        self.preempted = False
        self.guard = NonFiniteGuard(config.train.max_nonfinite_steps, list(config.train.inject_nonfinite_steps))

    # ------------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        config = self.config
        distributed.init_distributed()
        seed_everything(config.seed)
        write_run_files(self.run_dir, config)
        self.device = distributed.device()
        # The modality switch: a vision-language model brings a processor; its images go through the same loop.
        self.processor, self.tokenizer, self.vision = engines.load_modality(config.model)
        self._setup_data()
        self.schedule = BatchSchedule(
            num_samples=len(self.train_items),
            batch_size=config.train.batch_size,
            micro_batch_size=config.train.micro_batch_size,
            world_size=distributed.world_size(),
            rank=distributed.rank(),
            seed=config.seed,
        )
        self.total_steps = total_steps(
            len(self.train_items), config.train.batch_size, config.train.epochs, config.train.max_steps
        )
        ds_config = engines.deepspeed_config(
            config.deepspeed,
            micro_batch_size=config.train.micro_batch_size,
            gradient_accumulation_steps=self.schedule.gradient_accumulation_steps,
        )
        self.peak_memory = memory.PeakMemory.started()
        self.loaded = engines.load_causal_lm(config.model, ds_config, config.deepspeed, self.tokenizer, trainable=True)
        self.engine = engines.trainable_engine(
            self.loaded.model, ds_config, config.optim, self.total_steps, config.deepspeed
        )
        self.memory_estimates = memory.announce(
            {"policy": (self.engine, True)},
            config.deepspeed,
            world_size=distributed.world_size(),
            micro_batch_size=config.train.micro_batch_size,
            sequence_length=config.data.max_length,
            checkpointing={"policy": config.model.gradient_checkpointing},
        )
        self.logger = create_logger(config, self.run_dir, self.total_steps, "sft")
        checkpoint = engines.find_checkpoint(config.train.resume, self.run_dir)
        if checkpoint is not None:
            state = engines.load_checkpoint(checkpoint, {"policy": self.engine})
            self.step = int(state["step"])
            self.logger.advance(self.step)
            self.logger.message(f"resumed from {checkpoint} at step {self.step}")

    def _setup_data(self) -> None:
        from safe_rlhf.data import load_samples
        from safe_rlhf.steer import steer_sft_samples

        data = self.config.data
        # SteerLM: attribute-labelled samples, each prompt conditioned on its own labels.
        kind = "attribute" if data.steer_attributes else "sft"

        def conditioned(samples: list[Any]) -> list[Any]:
            return steer_sft_samples(samples, data.steer_attributes) if data.steer_attributes else samples

        train = load_samples(data.train, kind=kind, on_error=data.on_error, seed=self.config.seed)
        train_samples = conditioned(list(train.samples))
        if data.eval:
            eval_samples = conditioned(
                list(load_samples(data.eval, kind=kind, on_error=data.on_error, seed=self.config.seed).samples)
            )
        else:
            train_samples, eval_samples = split_train_eval(train_samples, data.eval_fraction, self.config.seed)
        self.train_items, train_counts = tokenize_sft_samples(
            train_samples, self.tokenizer, data.max_length, data.on_error, self.vision
        )
        self.eval_items, _ = tokenize_sft_samples(
            eval_samples, self.tokenizer, data.max_length, data.on_error, self.vision
        )
        skipped = dict(train.stats.skipped)
        summary = f"data: {train.stats.read} read, {len(self.train_items)} train, {len(self.eval_items)} eval"
        if skipped or train_counts:
            summary += f"; skipped {skipped}; tokenization {dict(train_counts)}"
        distributed.print0(summary)

    # ------------------------------------------------------------------------------------------------------- train
    def _collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        from safe_rlhf.data import collate_sft

        return to_device(collate_sft(items, self.tokenizer.pad_token_id, self.vision), self.device)

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; the loss is the token mean over the global batch."""
        micro_batches = [self._collate([self.train_items[i] for i in ids]) for ids in self.schedule.rank_indices(step)]
        # Count response tokens of the whole global batch first, so each token weighs the same whatever its
        # micro-batch or rank (DeepSpeed divides by accumulation steps and averages over ranks; undo both).
        local_tokens = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in micro_batches)
        # Every token the forward reads (prompt + response, no padding): the throughput and FLOP counts need it.
        local_input_tokens = sum(int(batch["attention_mask"].sum()) for batch in micro_batches)
        counts = distributed.all_reduce_sum(torch.tensor([local_tokens, local_input_tokens], dtype=torch.float64))
        global_tokens, global_input_tokens = float(counts[0]), float(counts[1])
        scale = self.schedule.gradient_accumulation_steps * distributed.world_size() / max(global_tokens, 1.0)
        loss_sum, skipped = 0.0, 0
        sample_ids = self.schedule.rank_indices(step)
        for index, batch in enumerate(micro_batches):
            logits = self.engine(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **engines.image_inputs(batch)
            ).logits
            token_loss_sum, _ = sft_loss_sum(logits, batch["labels"])
            token_loss_sum = self.guard.prepare(token_loss_sum, step + 1)
            if all_finite(token_loss_sum):
                self.engine.backward(token_loss_sum * scale)
                loss_sum += float(token_loss_sum.detach())
            else:
                # Same decision on every rank: nothing non-finite reaches the gradients.
                del logits, token_loss_sum
                zero_backward(self.engine, self.tokenizer.pad_token_id)
                skipped += 1
                shown = ", ".join(str(i) for i in sample_ids[index][:8])
                # Always reported (whatever the logger): which step and which samples.
                print(
                    f"step {step + 1} (rank {distributed.rank()}): non-finite loss in micro-batch {index} "
                    f"(samples {shown}); skipped it",
                    file=sys.stderr,
                    flush=True,
                )
            is_last = index == len(micro_batches) - 1
            with paused_learning_rate(self.engine, active=is_last and skipped == len(micro_batches)):
                self.engine.step()
        global_loss = float(distributed.all_reduce_sum(torch.tensor(loss_sum)).item()) / max(global_tokens, 1.0)
        return {"train/loss": global_loss, "train/tokens": global_tokens, "train/input_tokens": global_input_tokens,
                "train/skipped_micro_batches": skipped}  # fmt: skip

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-mean loss over the held-out set, all ranks together."""
        if not self.eval_items:
            return {}
        self.engine.eval()
        loss_sum, token_count = 0.0, 0.0
        # Every rank must run the same number of forward passes under ZeRO-3 (parameter gathers are collective).
        mine = shard(self.eval_items)
        per_rank = -(-len(self.eval_items) // distributed.world_size())
        batches = list(chunks(mine, self.config.train.micro_batch_size))
        needed = -(-per_rank // self.config.train.micro_batch_size)
        for index in range(needed):
            items = batches[index] if index < len(batches) else [self.eval_items[0]]
            batch = self._collate(items)
            logits = self.engine(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **engines.image_inputs(batch)
            ).logits
            if index < len(batches):
                total, count = sft_loss_sum(logits, batch["labels"])
                loss_sum += float(total)
                token_count += float(count)
        self.engine.train()
        totals = distributed.all_reduce_sum(torch.tensor([loss_sum, token_count], dtype=torch.float64))
        return {"eval/loss": float(totals[0] / totals[1].clamp_min(1.0))}

    def train(self) -> None:
        config = self.config.train
        watcher = PreemptionWatcher().install()
        self.engine.train()
        tokens_since_log, input_tokens_since_log, time_since_log = 0.0, 0.0, time.perf_counter()
        if self.step == 0 and self.eval_items:
            self.logger.log(self.evaluate(), step=0)
        while self.step < self.total_steps:
            metrics = self.train_step(self.step)
            self.step += 1
            tokens_since_log += metrics.pop("train/tokens")
            input_tokens_since_log += metrics.pop("train/input_tokens")
            skipped = int(metrics.pop("train/skipped_micro_batches"))
            stop_message = self.guard.end_step(skipped, self.step)
            metrics["train/nonfinite_steps"] = float(self.guard.total_skipped)
            self.logger.advance()
            if self.step % config.log_steps == 0 or self.step == self.total_steps or stop_message:
                elapsed = time.perf_counter() - time_since_log
                metrics["train/lr"] = float(self.engine.get_lr()[0])
                metrics["train/tokens_per_second"] = tokens_since_log / max(elapsed, 1e-9)  # response tokens
                metrics["train/input_tokens_per_second"] = input_tokens_since_log / max(elapsed, 1e-9)
                metrics["train/epoch"] = self.step / self.schedule.steps_per_epoch
                self.logger.log(metrics, step=self.step)
                tokens_since_log, input_tokens_since_log, time_since_log = 0.0, 0.0, time.perf_counter()
            if stop_message:
                # The weights never saw the bad gradients: this checkpoint is the last good state.
                self.save_checkpoint()
                raise NonFiniteError(stop_message)
            if config.eval_steps and self.step % config.eval_steps == 0 and self.step < self.total_steps:
                self.logger.log(self.evaluate(), step=self.step)
            # Preempted: keep everything up to this step and let the batch script requeue the job.
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
        # A VLM's processor (tokenizer, image processor, chat template) goes with it: AutoProcessor loads the export.
        saved_with = self.processor if self.processor is not None else self.tokenizer
        path = engines.export_hf(self.engine, saved_with, self.run_dir / "model", self.config.deepspeed.zero_stage)
        if self.config.data.steer_attributes and distributed.is_main_process():
            from safe_rlhf.steer import write_trained_attributes

            write_trained_attributes(path, self.config.data.steer_attributes)  # what steered requests must name
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
            distributed.shutdown(self.engine)
        if self.preempted:
            raise SystemExit(REQUEUE_EXIT_CODE)

"""Reward-model and cost-model training: a causal-LM backbone plus a linear score head, on preference pairs.

Run it::

    python -m safe_rlhf.train --config-name reward_model model.name_or_path=runs/sft/model
    python -m safe_rlhf.train --config-name cost_model model.name_or_path=runs/sft/model \\
        score.severity_weights=[1,1,2,4]
    python -m safe_rlhf.train --config-name reward_model data.train=pku-safe-rlhf:/data/PKU-SafeRLHF \\
        model=hf model.name_or_path=/models/llama-3-8b-sft deepspeed=zero3 deepspeed.precision=bf16
    # multi-attribute regression (HelpSteer's five 0-4 scores combined into one reward)
    python -m safe_rlhf.train --config-name reward_model score.objective=regression score.score_dim=5 \\
        score.attribute_names=[helpfulness,correctness,coherence,complexity,verbosity] \\
        score.attribute_weights=[0.65,0.8,0.45,0.55,-0.4] data.train=helpsteer:/data/helpsteer data.eval=null
    # QA moderation: flagged / severity / harm categories of one response (safe_rlhf.moderation)
    python -m safe_rlhf.train --config-name moderation model.name_or_path=runs/sft/model
    python -m safe_rlhf.train --config-name moderation data.train=pku-safe-rlhf-qa:/data/PKU-SafeRLHF-QA \
        model=hf model.name_or_path=/models/llama-3-8b deepspeed=zero3 deepspeed.precision=bf16

Losses (safe_rlhf.algorithms): reward ``-log sigmoid(R(better) - R(worse)) + a * mean(R^2)``; cost
``-log sigmoid(C(unsafer) - C(safer)) - log sigmoid(s_safer C(safer)) - log sigmoid(s_unsafer C(unsafer))``
``+ a mean(C^2)``
with s = +1 unsafe, -1 safe, so **cost > 0 means unsafe**; moderation: masked multi-label BCE over the outputs
flagged, severity >= 2, severity >= 3 and one per harm category (``safe_rlhf.algorithms.moderation``), optionally
with each output's positives weighted by its negatives / positives, and the flag threshold chosen on the eval data at
the end.
Output: ``output_dir/model`` (a Hugging Face sequence-classification directory whose config records score type,
sign convention and score statistics; a moderation model's also its labels, thresholds and template) and
``output_dir/eval/summary.json`` (the same numbers as ``python -m safe_rlhf.evaluate --config-name score_model``).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch

from safe_rlhf import distributed, engines, memory
from safe_rlhf.algorithms import (
    balanced_pos_weight,
    cost_model_loss,
    moderation_loss,
    multi_attribute_regression_loss,
    reward_model_loss,
)
from safe_rlhf.algorithms.moderation import NUM_SEVERITY_OUTPUTS
from safe_rlhf.config import ConfigError, ScoreModelConfig
from safe_rlhf.logger import write_run_files
from safe_rlhf.recipes.common import (
    REQUEUE_EXIT_CODE,
    BatchSchedule,
    NonFiniteError,
    NonFiniteGuard,
    PreemptionWatcher,
    all_finite,
    create_logger,
    paused_learning_rate,
    save_or_stop,
    seed_everything,
    split_train_eval,
    to_device,
    total_steps,
    zero_backward,
)
from safe_rlhf.score_model import (
    COST_SIGN_CONVENTION,
    ScoreNormalizer,
    end_scores,
    load_score_model,
    set_score_metadata,
)


def length_balanced(items: list[Any], num_bins: int, seed: int) -> tuple[list[Any], int]:
    """Downsample pairs so that, within each bin of |length difference|, the preferred response is the longer one as
    often as the shorter one. Pairs of equal length are kept. Returns (kept pairs in original order, dropped count)."""
    if num_bins <= 0 or not items:
        return items, 0
    differences = [abs(item.lengths[item.better_id] - item.lengths[1 - item.better_id]) for item in items]
    top = max(differences) or 1
    groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
    keep: set[int] = set()
    for index, (item, difference) in enumerate(zip(items, differences)):
        if difference == 0:
            keep.add(index)
            continue
        bin_index = min(num_bins - 1, (difference - 1) * num_bins // top)
        better_is_longer = item.lengths[item.better_id] > item.lengths[1 - item.better_id]
        groups[(bin_index, better_is_longer)].append(index)
    rng = random.Random(seed)
    for bin_index in range(num_bins):
        longer, shorter = groups.get((bin_index, True), []), groups.get((bin_index, False), [])
        size = min(len(longer), len(shorter))
        keep.update(rng.sample(longer, size))
        keep.update(rng.sample(shorter, size))
    kept = [item for index, item in enumerate(items) if index in keep]
    return kept, len(items) - len(kept)


def random_negatives(samples: list[Any], fraction: float, seed: int) -> list[Any]:
    """Random-negative augmentation: ``round(fraction * N)`` new pairs, each a sampled pair's preferred response
    (first, preferred) against the preferred response of a pair with another prompt. No safety labels."""
    from safe_rlhf.data import PreferenceSample

    count = round(fraction * len(samples))
    if count == 0 or len({s.prompt for s in samples}) < 2:
        return []
    # (a pair with no partner of another prompt and text within 100 draws is left out)
    rng = random.Random(f"random-negatives:{seed}")
    added = []
    for index in rng.sample(range(len(samples)), count):
        sample = samples[index]
        other = samples[rng.randrange(len(samples))]
        # another prompt, and another text (refusals repeat across prompts: an equal pair teaches nothing)
        for _ in range(100):
            if other.prompt != sample.prompt and other.better != sample.better:
                break
            other = samples[rng.randrange(len(samples))]
        else:
            continue
        added.append(
            PreferenceSample(
                messages=sample.messages,
                responses=(sample.better, other.better),
                better_id=0,
                origin=f"{sample.origin}+random_negative",
            )
        )
    return added


def update_normalizer(normalizer: ScoreNormalizer, scores: torch.Tensor, finite: bool) -> None:
    """Add one micro-batch's scores (N, K), this rank's and every other rank's, to the normalizer.

    ``finite`` is the outcome of :func:`all_finite` on the micro-batch's loss, which every rank shares: a skipped
    micro-batch adds nothing (one NaN batch would poison the statistics for good, and they are exported with the
    model), and its scores are not gathered on any rank, so the collective stays matched. Rows with a non-finite
    score are dropped. Ranks may hold different numbers of rows; every rank ends with the statistics of the union
    (so rank 0's, the ones saved, describe all the data)."""
    if normalizer.kind == "none" or not finite:
        return
    scores = scores.detach().float()
    scores = scores[torch.isfinite(scores).all(dim=1)]
    normalizer.update(distributed.all_gather_cat(scores))


class ScoreModelRecipe:
    """Reward model (recipe=reward_model), cost model (recipe=cost_model) or QA-moderation classifier
    (recipe=moderation): setup -> train -> evaluate -> export."""

    def __init__(self, config: ScoreModelConfig, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.processor: Any = None  # a vision-language model's processor (setup); None for text
        self.vision: Any = None  # its ImageTokens: the modality switch of the data path
        self.engine: Any = None
        self.step = 0
        self.preempted = False
        self.is_cost = config.recipe == "cost_model"
        self.regression = config.score.objective == "regression"
        self.moderation = config.recipe == "moderation"
        self.score_dim = config.score.score_dim  # moderation: 3 + the number of categories, set by _setup_data
        self.thresholds: list[float] = []  # moderation: one probability per output, the flag's chosen at the end
        self.normalizer = ScoreNormalizer(kind=config.score.normalizer, decay=config.score.normalizer_decay)
        self.guard = NonFiniteGuard(config.train.max_nonfinite_steps, list(config.train.inject_nonfinite_steps))

    # ------------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        config = self.config
        distributed.init_distributed()
        seed_everything(config.seed)
        write_run_files(self.run_dir, config)
        self.device = distributed.device()
        # The modality switch: a vision-language model brings a processor; each pair's image goes with both answers.
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
        from transformers.integrations import HfDeepSpeedConfig

        # Kept referenced: under ZeRO-3 it makes from_pretrained partition the weights while loading.
        self.zero3_context = HfDeepSpeedConfig(ds_config) if config.deepspeed.zero_stage == 3 else None
        self.peak_memory = memory.PeakMemory.started()
        model = load_score_model(
            config.model.name_or_path,
            score_dim=self.score_dim,
            dtype=engines.compute_dtype(config.deepspeed),
            trust_remote_code=config.model.trust_remote_code,
            new_head=True,
        )
        engines.fit_vocabulary(model, self.tokenizer)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        engines.disable_dropout(model)
        if self.processor is not None and config.model.freeze_vision_tower:
            from safe_rlhf.vision_models import freeze_vision_tower

            freeze_vision_tower(model)
        model = engines.prepare_trainable(
            model, config.model.lora, config.model.gradient_checkpointing, score_model=True
        )
        self.engine = engines.trainable_engine(model, ds_config, config.optim, self.total_steps, config.deepspeed)
        self.memory_estimates = memory.announce(
            {"score_model": (self.engine, True)},
            config.deepspeed,
            world_size=distributed.world_size(),
            micro_batch_size=2 * config.train.micro_batch_size,  # a pair is two sequences
            sequence_length=config.data.max_length,
            checkpointing={"score_model": config.model.gradient_checkpointing},
        )
        self.logger = create_logger(config, self.run_dir, self.total_steps, config.recipe)
        checkpoint = engines.find_checkpoint(config.train.resume, self.run_dir)
        if checkpoint is not None:
            if self.moderation:
                self._check_checkpoint_categories(checkpoint)  # before the head's shape could mismatch
            state = engines.load_checkpoint(checkpoint, {"score_model": self.engine})
            self.step = int(state["step"])
            self.normalizer = ScoreNormalizer.from_dict(state.get("normalizer"))
            self.logger.advance(self.step)
            self.logger.message(f"resumed from {checkpoint} at step {self.step}")

    def _setup_data(self) -> None:
        from safe_rlhf.data import load_samples

        if self.moderation:
            self._setup_moderation_data()
            return
        data, kind = self.config.data, ("attribute" if self.regression else "preference")
        train = load_samples(data.train, kind=kind, on_error=data.on_error, seed=self.config.seed)
        train_samples = list(train.samples)
        skipped: Counter[str] = Counter(train.stats.skipped)
        if self.is_cost:
            # The cost loss needs the safety preference and both safety labels.
            labelled = [s for s in train_samples if s.safer_id is not None and None not in s.is_safe]
            skipped["no_safety_labels"] += len(train_samples) - len(labelled)
            train_samples = labelled
        if data.eval:
            eval_samples = list(
                load_samples(data.eval, kind=kind, on_error=data.on_error, seed=self.config.seed).samples
            )
        else:
            train_samples, eval_samples = split_train_eval(train_samples, data.eval_fraction, self.config.seed)
        fraction = self.config.score.random_negative_fraction
        if fraction and not self.regression:
            if self.is_cost:
                raise ConfigError(
                    "score.random_negative_fraction is for reward models (its pairs have no safety labels)"
                )
            augmented = random_negatives(train_samples, fraction, self.config.seed)
            train_samples = train_samples + augmented
            distributed.print0(f"random negatives: {len(augmented)} pairs added")
        self.train_samples, self.train_items = self._tokenize(train_samples, skipped)
        self.eval_samples, self.eval_items = self._tokenize(eval_samples, Counter())
        if self.config.score.length_balance_bins and not self.regression:
            balanced, dropped = length_balanced(
                self.train_items, self.config.score.length_balance_bins, self.config.seed
            )
            kept_ids = {id(item) for item in balanced}
            pairs = [(s, i) for s, i in zip(self.train_samples, self.train_items) if id(i) in kept_ids]
            self.train_samples, self.train_items = [s for s, _ in pairs], [i for _, i in pairs]
            skipped["length_balance"] += dropped
        distributed.print0(
            f"data: {train.stats.read} read, {len(self.train_items)} train, {len(self.eval_items)} eval"
            + (f"; skipped {dict(skipped)}" if skipped else "")
        )
        self.skipped = dict(skipped)

    def _check_checkpoint_categories(self, checkpoint: Path) -> None:
        """A moderation checkpoint holds a head for its own category set: resuming on another stops with one line."""
        try:
            saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("category_keys")
        except (OSError, ValueError):
            return  # load_checkpoint names the unreadable file
        if saved != self.category_keys:
            raise engines.CheckpointError(
                f"{checkpoint} was trained on categories {saved}, this run's data gives {self.category_keys}"
            )

    def _setup_moderation_data(self) -> None:
        """Attribute samples (or preference pairs split into their labelled responses), the category set, the
        (N, K) targets and known-label masks, and the positive weights."""
        from safe_rlhf.data import DataError
        from safe_rlhf.moderation import category_keys, load_labelled_responses

        data, settings, seed = self.config.data, self.config.moderation, self.config.seed
        train_samples, skipped, read = load_labelled_responses(data.train, data.on_error, seed)
        if data.eval:
            eval_samples, _, _ = load_labelled_responses(data.eval, data.on_error, seed)
        else:
            train_samples, eval_samples = split_train_eval(train_samples, data.eval_fraction, self.config.seed)
        found = category_keys(train_samples)
        if settings.categories:
            wanted = [name if name.startswith("harm_id:") else f"harm:{name}" for name in settings.categories]
            missing = [key for key in wanted if key not in found]
            if missing:
                raise DataError(
                    f"moderation.categories: {', '.join(missing)} not found in {data.train} "
                    f"(it has {', '.join(found) or 'no categories'})",
                    reason="bad_spec",
                )
            found = wanted
        self.category_keys = found
        self.score_dim = NUM_SEVERITY_OUTPUTS + len(found)
        self.train_samples, self.train_items = self._tokenize(train_samples, skipped)
        self.eval_samples, self.eval_items = self._tokenize(eval_samples, Counter())
        self.train_targets, self.train_known = self._moderation_labels(self.train_samples)
        self.eval_targets, self.eval_known = self._moderation_labels(self.eval_samples)
        if not bool(self.train_known[:, 0].any()):
            raise DataError(f"{data.train}: no response has a safety label (is_safe)", reason="missing_field")
        self.pos_weight = (
            balanced_pos_weight(self.train_targets, self.train_known, settings.max_pos_weight)
            if settings.pos_weight == "balanced"
            else None
        )
        distributed.print0(
            f"data: {read} read, {len(self.train_items)} train, {len(self.eval_items)} eval responses; "
            f"{len(found)} categories; unsafe share {float(self.train_targets[:, 0].mean()):.3f}"
            + (f"; skipped {dict(skipped)}" if skipped else "")
        )
        self.skipped = dict(skipped)

    def _moderation_labels(self, samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:  # (N, K) x2
        from safe_rlhf.moderation import label_tensors

        return label_tensors(samples, self.category_keys)

    def _tokenize(self, samples: list[Any], skipped: Counter[str]) -> tuple[list[Any], list[Any]]:
        data = self.config.data
        one_response = self.regression or self.moderation
        return self._tokenize_with(
            samples, self.tokenizer, data.max_length, data.on_error, one_response, skipped, self.vision
        )

    @staticmethod
    def _tokenize_with(
        samples: list[Any],
        tokenizer: Any,
        max_length: int,
        on_error: str,
        regression: bool,
        skipped: Counter[str] | None = None,
        vision: Any = None,
    ) -> tuple[list[Any], list[Any]]:
        """(samples, tokenized items) in the same order; a sample that cannot be tokenized is raised or counted."""
        from safe_rlhf.data import DataError, tokenize_preference, tokenize_sft

        kept_samples, items = [], []
        for sample in samples:
            try:
                if regression:
                    item: Any = tokenize_sft(sample, tokenizer, max_length, vision)
                else:
                    item = tokenize_preference(sample, tokenizer, max_length, vision)
            except DataError as error:
                if on_error == "raise":
                    raise
                if skipped is not None:
                    skipped[error.reason] += 1
                continue
            kept_samples.append(sample)
            items.append(item)
        return kept_samples, items

    # ------------------------------------------------------------------------------------------------------- train
    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """(loss, metrics, the scores (N, 1) for the normalizer, added only if the loss turns out finite)."""
        regularization = self.config.score.regularization
        pixels = engines.image_inputs(batch)  # a VLM: the pair's image, shared by both sequences
        if self.is_cost:
            safer = end_scores(self.engine, batch["safer_input_ids"], batch["safer_attention_mask"], **pixels)[:, 0]
            unsafer = end_scores(self.engine, batch["unsafer_input_ids"], batch["unsafer_attention_mask"], **pixels)[
                :, 0
            ]
            # Weight by the severity of the unsafer response (levels 0-3).
            severity = batch["severity"]  # (B, 2) in response order
            safer_id = batch["safer_id"].clamp_min(0)
            unsafer_severity = severity.gather(1, (1 - safer_id).unsqueeze(1)).squeeze(1).clamp(0, 3)
            weights = torch.tensor(self.config.score.severity_weights, device=safer.device)[unsafer_severity]
            loss, stats = cost_model_loss(
                safer, unsafer, batch["safer_is_safe"] == 1, batch["unsafer_is_safe"] == 1, regularization, weights
            )
            metrics = {"accuracy": float(stats.accuracy), "sign_accuracy": float(stats.sign_accuracy)}
            return loss, metrics, torch.cat([safer, unsafer]).unsqueeze(1)
        better = end_scores(self.engine, batch["better_input_ids"], batch["better_attention_mask"], **pixels)[:, 0]
        worse = end_scores(self.engine, batch["worse_input_ids"], batch["worse_attention_mask"], **pixels)[:, 0]
        loss, reward_stats = reward_model_loss(better, worse, regularization)
        return loss, {"accuracy": float(reward_stats.accuracy)}, torch.cat([better, worse]).unsqueeze(1)

    def _regression_loss(self, ids: list[int]) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        from safe_rlhf.data import collate_sft

        batch = to_device(
            collate_sft([self.train_items[i] for i in ids], self.tokenizer.pad_token_id, self.vision), self.device
        )
        names = self.config.score.attribute_names
        targets = torch.tensor(
            [[float(self.train_samples[i].attributes[name]) for name in names] for i in ids], device=self.device
        )
        predicted = end_scores(
            self.engine, batch["input_ids"], batch["attention_mask"], **engines.image_inputs(batch)
        )  # (B, K)
        # The loss weights, never the reward weights: a negative reward weight (verbosity) must not make the model
        # maximise that attribute's error.
        weights = (
            torch.tensor(self.config.score.attribute_loss_weights, device=self.device)
            if self.config.score.attribute_loss_weights
            else None
        )
        loss, stats = multi_attribute_regression_loss(predicted, targets, weights)
        metrics = {f"mse_{name}": float(value) for name, value in zip(names, stats.per_attribute_mse)}
        return loss, metrics, predicted

    def _moderation_loss(self, ids: list[int]) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        from safe_rlhf.data import collate_sft

        batch = to_device(
            collate_sft([self.train_items[i] for i in ids], self.tokenizer.pad_token_id, self.vision), self.device
        )
        logits = end_scores(
            self.engine, batch["input_ids"], batch["attention_mask"], **engines.image_inputs(batch)
        )  # (B, K)
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        loss, stats = moderation_loss(
            logits, self.train_targets[ids].to(logits.device), self.train_known[ids].to(logits.device), pos_weight
        )
        return loss, {"flagged_accuracy": float(stats.flagged_accuracy)}, logits

    def _micro_batch_loss(self, ids: list[int]) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        from safe_rlhf.data import collate_preference

        if self.moderation:
            return self._moderation_loss(ids)
        if self.regression:
            return self._regression_loss(ids)
        items = [self.train_items[i] for i in ids]
        return self._loss(to_device(collate_preference(items, self.tokenizer.pad_token_id, self.vision), self.device))

    def train_step(self, step: int) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        micro_batches = self.schedule.rank_indices(step)
        skipped = 0
        for index, ids in enumerate(micro_batches):
            loss, stats, scores = self._micro_batch_loss(ids)
            loss = self.guard.prepare(loss, step + 1)
            finite = all_finite(loss)
            update_normalizer(self.normalizer, scores, finite)  # a collective: every rank, every micro-batch
            del scores
            if finite:
                # Pairs per micro-batch are equal, so the mean over micro-batches is the mean over pairs.
                self.engine.backward(loss)
                totals["loss"] += float(loss.detach())
                for key, value in stats.items():
                    totals[key] += value
            else:
                del loss
                zero_backward(self.engine, self.tokenizer.pad_token_id)
                skipped += 1
                print(
                    f"step {step + 1} (rank {distributed.rank()}): non-finite loss in micro-batch {index} "
                    f"(samples {', '.join(str(i) for i in ids[:8])}); skipped it",
                    file=sys.stderr,
                    flush=True,
                )
            last = index == len(micro_batches) - 1
            with paused_learning_rate(self.engine, active=last and skipped == len(micro_batches)):
                self.engine.step()
        self.skipped_micro_batches = skipped
        averaged = torch.tensor([totals[k] / len(micro_batches) for k in sorted(totals)], dtype=torch.float64)
        averaged = distributed.all_reduce_mean(averaged)
        return {f"train/{k}": float(v) for k, v in zip(sorted(totals), averaged)}

    def evaluate(self, choose_threshold: bool = False) -> dict[str, Any]:
        """The held-out pairs' summary, from the evaluation code (``safe_rlhf.evaluate``), on every rank.

        Moderation: at the current thresholds (0.5 until the end); ``choose_threshold`` first picks the flag
        threshold on these data (``moderation.threshold_metric``) and keeps it for the export."""
        if not self.eval_items or self.regression:
            return {}
        from safe_rlhf.evaluate import choose_flag_threshold, moderation_evaluation, score_model_evaluation

        self.engine.eval()
        if self.moderation:
            if not self.thresholds:
                self.thresholds = [0.5] * self.score_dim
            probabilities = moderation_evaluation(
                self.engine, self.eval_items, self.tokenizer.pad_token_id, self.config.train.micro_batch_size,
                self.vision,
            )  # fmt: skip
            choice: dict[str, Any] = {}
            if choose_threshold:
                settings = self.config.moderation
                choice = choose_flag_threshold(
                    probabilities, self.eval_targets, self.eval_known, settings.threshold_metric,
                    settings.threshold_target,
                )  # fmt: skip
                self.thresholds[0] = float(choice["threshold"])
            from safe_rlhf.evaluate import moderation_summary

            summary = moderation_summary(
                probabilities, self.eval_targets, self.eval_known, self.labels(), self.thresholds
            )
            if choice:
                summary["threshold_choice"] = choice
            self.engine.train()
            return summary
        summary = score_model_evaluation(
            self.engine,
            self.eval_samples,
            self.eval_items,
            self.tokenizer.pad_token_id,
            self.config.train.micro_batch_size,
            "cost" if self.is_cost else "reward",
            self.vision,
        )
        self.engine.train()
        return summary

    def labels(self) -> list[str]:
        """Moderation output names: flagged, severity>=2, severity>=3, then the category names."""
        from safe_rlhf.moderation import SEVERITY_LABELS, category_name

        return [*SEVERITY_LABELS, *(category_name(key) for key in self.category_keys)]

    @staticmethod
    def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
        if "flagged" in summary:  # moderation
            flat = {f"eval/flagged_{k}": summary["flagged"][k] for k in ("accuracy", "precision", "recall", "f1")}
            if summary["flagged"].get("auroc") is not None:
                flat["eval/flagged_auroc"] = summary["flagged"]["auroc"]
            if summary.get("severity"):
                flat["eval/severity_accuracy"] = summary["severity"]["accuracy"]
            flat["eval/ece"] = summary["calibration"]["ece"]
            return {k: float(v) for k, v in flat.items()}
        keys = ("accuracy", "sign_accuracy", "true_accuracy", "true_sign_accuracy", "length_correlation")
        return {f"eval/{k}": float(summary[k]) for k in keys if summary.get(k) is not None}

    def train(self) -> None:
        config = self.config.train
        watcher = PreemptionWatcher().install()
        self.engine.train()
        start = time.perf_counter()
        while self.step < self.total_steps:
            metrics = self.train_step(self.step)
            self.step += 1
            self.logger.advance()
            stop_message = self.guard.end_step(self.skipped_micro_batches, self.step)
            metrics["train/nonfinite_steps"] = float(self.guard.total_skipped)
            if self.step % config.log_steps == 0 or self.step == self.total_steps or stop_message:
                metrics["train/lr"] = float(self.engine.get_lr()[0])
                metrics["train/pairs_per_second"] = self.step * config.batch_size / (time.perf_counter() - start)
                self.logger.log(metrics, step=self.step)
            if stop_message:
                self.save_checkpoint()  # the weights never saw the bad gradients: the last good state
                raise NonFiniteError(stop_message)
            if config.eval_steps and self.step % config.eval_steps == 0 and self.step < self.total_steps:
                self.logger.log(self.flat_metrics(self.evaluate()), step=self.step)
            if save_or_stop(self.step, self.total_steps, config.save_steps, watcher, self.save_checkpoint, self.logger):
                self.preempted = True
                break
        watcher.uninstall()

    # -------------------------------------------------------------------------------------------------------- save
    def save_checkpoint(self) -> None:
        engines.save_checkpoint(
            self.run_dir / "checkpoints",
            self.step,
            {"score_model": self.engine},
            {
                "total_steps": self.total_steps,
                "normalizer": self.normalizer.to_dict(),
                **({"category_keys": self.category_keys} if self.moderation else {}),
            },
            keep_last=self.config.train.save_total_limit,
        )

    def export(self) -> None:
        score = self.config.score
        if self.moderation:
            from safe_rlhf.moderation import TEMPLATE, category_name

            set_score_metadata(
                self.engine.module,
                score_type="moderation",
                score_dim=self.score_dim,
                objective="moderation",
                sign_convention="logit > logit(threshold) means the output passes (flagged = unsafe)",
                labels=self.labels(),
                categories=[category_name(key) for key in self.category_keys],
                category_keys=self.category_keys,
                thresholds=self.thresholds or [0.5] * self.score_dim,
                severity="ordinal: cumulative outputs severity>=1 (flagged), >=2, >=3",
                max_length=self.config.data.max_length,
                template=TEMPLATE,
                normalizer=ScoreNormalizer().to_dict(),
                normalize=False,
            )
            path = engines.export_hf(
                self.engine, self.processor or self.tokenizer, self.run_dir / "model", self.config.deepspeed.zero_stage
            )
            self.logger.message(f"exported moderation model to {path}")
            return
        set_score_metadata(
            self.engine.module,
            score_type="cost" if self.is_cost else "reward",
            score_dim=score.score_dim,
            objective=score.objective,
            sign_convention=COST_SIGN_CONVENTION if self.is_cost else "higher is better",
            normalizer=self.normalizer.to_dict(),
            normalize=score.normalize,
            attribute_names=list(score.attribute_names) or None,
            attribute_weights=list(score.attribute_weights) or None,
        )
        path = engines.export_hf(
            self.engine, self.processor or self.tokenizer, self.run_dir / "model", self.config.deepspeed.zero_stage
        )
        self.logger.message(f"exported score model to {path}")

    def final_evaluation(self) -> None:
        summary = self.evaluate(choose_threshold=self.moderation)
        if not summary:
            return
        self.logger.log(self.flat_metrics(summary), step=self.step)
        if distributed.is_main_process():
            (self.run_dir / "eval").mkdir(parents=True, exist_ok=True)
            summary["skipped"] = self.skipped
            (self.run_dir / "eval" / "summary.json").write_text(json.dumps(summary, indent=2))
            headline: dict[str, Any]
            if self.moderation:
                headline = {k[5:]: v for k, v in self.flat_metrics(summary).items()}
                headline["threshold"] = self.thresholds[0]
            else:
                keys = ("accuracy", "sign_accuracy", "true_accuracy", "true_sign_accuracy")
                headline = {k: summary.get(k) for k in keys}
            self.logger.message(f"evaluation: {json.dumps({k: v for k, v in headline.items() if v is not None})}")

    def run(self) -> None:
        try:
            self.setup()
            self.train()
            memory.report_peak(self.memory_estimates, self.peak_memory, self.run_dir)
            if not self.preempted:
                self.final_evaluation()
                if self.config.train.export:
                    self.export()
            self.logger.close()
        finally:
            distributed.shutdown(self.engine)
        if self.preempted:
            raise SystemExit(REQUEUE_EXIT_CODE)

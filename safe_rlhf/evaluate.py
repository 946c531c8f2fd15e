"""Evaluation entry point (same hydra machinery as training).

Score a reward or cost model on preference pairs::

    python -m safe_rlhf.evaluate --config-name score_model model.name_or_path=runs/reward_model/model
    python -m safe_rlhf.evaluate --config-name score_model model.name_or_path=runs/cost_model/model \\
        data.train=pku-safe-rlhf:/data/PKU-SafeRLHF@test output_dir=runs/eval/cost

Evaluate a moderation model on labelled responses (flagged P/R/F1/AUROC, severity confusion matrix, per-category F1,
calibration and a reliability plot; ``--config-name moderation`` here means ``conf/moderation_eval.yaml``)::

    python -m safe_rlhf.evaluate --config-name moderation model.name_or_path=runs/moderation/model \
        data.train=pku-safe-rlhf-qa:/data/PKU-SafeRLHF-QA@test output_dir=runs/eval/moderation

For score models it reports pairwise accuracy, cost sign accuracy (cost > 0 means unsafe), sign accuracy per severity
level and harm category, score distributions and the correlation of scores with response length; on toy-world data
also the accuracy against the ground-truth judges. Writes ``output_dir/scores.jsonl`` (one line per pair) and
``output_dir/summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from safe_rlhf import distributed, engines
from safe_rlhf.config import ConfigError, ScoreEvalConfig
from safe_rlhf.logger import write_run_files
from safe_rlhf.score_metrics import ScoredPair


def toy_world_truth(sample: Any) -> tuple[tuple[float, float], tuple[int, int]] | None:
    """Ground-truth helpfulness and harm severity of both responses when the sample is from the toy world (its
    origin names a toy-world file); None for any other sample."""
    if "toyworld" not in getattr(sample, "origin", ""):
        return None
    if getattr(sample, "images", ()):  # the multimodal world: judged on the pictured request
        from safe_rlhf.toyworld import vision

        image_class = vision.class_of_image(sample.images[0].path)
        if image_class is None:
            return None
        question = sample.prompt
        helps = tuple(vision.helpfulness(question, image_class, r) for r in sample.responses)
        severities = tuple(vision.harm(question, image_class, r).severity for r in sample.responses)
        return (helps[0], helps[1]), (severities[0], severities[1])
    from safe_rlhf.toyworld import harm, helpfulness

    prompt = sample.prompt
    helps = (helpfulness(prompt, sample.responses[0]), helpfulness(prompt, sample.responses[1]))
    severities = (harm(prompt, sample.responses[0]).severity, harm(prompt, sample.responses[1]).severity)
    return helps, severities


def judged(pair: ScoredPair, sample: Any) -> ScoredPair:
    """``pair`` with the toy world's judgements of both responses when ``sample`` is from the toy world."""
    truth = toy_world_truth(sample)
    if truth is None:
        return pair
    return dataclasses.replace(pair, true_helpfulness=truth[0], true_severity=truth[1])


@torch.no_grad()
def score_pairs(
    model: Any,
    samples: list[Any],
    items: list[Any],
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    vision: Any = None,
) -> list[ScoredPair]:
    """Score both responses of every pair (this rank's share; :func:`gather_pairs` joins them), judged by the toy
    world where it can. ZeRO-3-safe: every rank makes the same number of forward passes. ``vision``: the
    ImageTokens of a VLM score model (each pair's image goes with both responses)."""
    from safe_rlhf.data import collate_preference
    from safe_rlhf.engines import image_inputs
    from safe_rlhf.recipes.common import chunks, shard, to_device
    from safe_rlhf.score_model import end_scores

    pairs: list[ScoredPair] = []
    indices = shard(list(range(len(items))))
    per_rank = -(-len(items) // distributed.world_size())
    passes = -(-per_rank // batch_size)
    batches = list(chunks(indices, batch_size))
    for pass_index in range(passes):
        batch_ids = batches[pass_index] if pass_index < len(batches) else [0]
        batch = to_device(collate_preference([items[i] for i in batch_ids], pad_token_id, vision), device)
        pixels = image_inputs(batch)
        # Response order as in the data: "better" is better_id, so map back.
        better = end_scores(model, batch["better_input_ids"], batch["better_attention_mask"], **pixels)[:, 0]
        worse = end_scores(model, batch["worse_input_ids"], batch["worse_attention_mask"], **pixels)[:, 0]
        if pass_index >= len(batches):
            continue
        for row, index in enumerate(batch_ids):
            item, sample = items[index], samples[index]
            scores = [0.0, 0.0]
            scores[item.better_id] = float(better[row])
            scores[1 - item.better_id] = float(worse[row])
            pair = ScoredPair(
                scores=(scores[0], scores[1]),
                lengths=item.lengths,
                better_id=item.better_id,
                safer_id=item.safer_id,
                is_safe=tuple(sample.is_safe),  # type: ignore[arg-type]
                severity=tuple(sample.severity),  # type: ignore[arg-type]
                categories=tuple(sample.harm_categories),  # type: ignore[arg-type]
            )
            pairs.append(judged(pair, sample))
    return pairs


def gather_pairs(pairs: list[ScoredPair]) -> list[ScoredPair]:
    """Every rank's pairs, on every rank (rank order)."""
    if distributed.world_size() == 1:
        return pairs
    import torch.distributed as dist

    gathered: list[Any] = [None] * distributed.world_size()
    dist.all_gather_object(gathered, pairs)
    return [pair for part in gathered for pair in part]


def score_model_evaluation(
    model: Any,
    samples: list[Any],
    items: list[Any],
    pad_token_id: int,
    batch_size: int,
    score_type: str,
    vision: Any = None,
) -> dict[str, Any]:
    """The score-model summary (:func:`safe_rlhf.score_metrics.score_model_summary`) of tokenized preference pairs,
    scored by ``model`` (an engine, on every rank). The training recipe's evaluation and ``--config-name score_model``
    both come here, so their numbers agree."""
    from safe_rlhf.score_metrics import score_model_summary

    pairs = gather_pairs(score_pairs(model, samples, items, pad_token_id, batch_size, distributed.device(), vision))
    return score_model_summary(pairs, score_type)


@torch.no_grad()
def moderation_evaluation(
    model: Any, items: list[Any], pad_token_id: int, batch_size: int, vision: Any = None
) -> torch.Tensor:
    """Sigmoid outputs (N, K) of a moderation model (an engine, on every rank) for tokenized responses, in item
    order on every rank. Each rank scores its strided share; ZeRO-3-safe: every rank makes the same number of
    forward passes (a rank with fewer items repeats item 0 and drops the result)."""
    from safe_rlhf.data import collate_sft
    from safe_rlhf.engines import image_inputs
    from safe_rlhf.recipes.common import chunks, shard, to_device
    from safe_rlhf.score_model import end_scores

    indices = shard(list(range(len(items))))
    per_rank = -(-len(items) // distributed.world_size())
    passes = -(-per_rank // batch_size)
    batches = list(chunks(indices, batch_size))
    outputs = []
    for pass_index in range(passes):
        batch_ids = batches[pass_index] if pass_index < len(batches) else [0]
        batch = to_device(collate_sft([items[i] for i in batch_ids], pad_token_id, vision), distributed.device())
        logits = end_scores(model, batch["input_ids"], batch["attention_mask"], **image_inputs(batch))
        if pass_index < len(batches):
            outputs.append(torch.sigmoid(logits.float()))
    width = int(getattr(getattr(model, "module", model).config, "num_labels", 0) or 0)
    local = torch.cat(outputs) if outputs else torch.zeros(0, width, device=distributed.device())
    gathered = distributed.all_gather_cat(local).cpu()
    world = distributed.world_size()
    order = [index for rank in range(world) for index in range(rank, len(items), world)]  # shard()'s order
    probabilities = torch.empty_like(gathered)
    probabilities[torch.tensor(order, dtype=torch.long)] = gathered
    return probabilities


def choose_flag_threshold(
    probabilities: torch.Tensor,  # (N, K)
    targets: torch.Tensor,  # (N, K)
    known: torch.Tensor,  # (N, K)
    metric: str,
    target: float,
) -> dict[str, Any]:
    """The flag threshold chosen on these (validation) data: best F1, or the target precision / recall met."""
    from safe_rlhf.analysis.moderation_metrics import best_f1_threshold, threshold_for_target

    rows = known[:, 0]
    labels, scores = targets[rows, 0].round().long().tolist(), probabilities[rows, 0].tolist()
    if not labels or len(set(labels)) < 2:
        return {"threshold": 0.5, "metric": metric, "met": False, "reason": "the data have one class only"}
    if metric == "f1":
        choice = dict(best_f1_threshold(labels, scores))
    else:
        kind: Literal["precision", "recall"] = "precision" if metric == "precision" else "recall"
        choice = dict(threshold_for_target(labels, scores, target, metric=kind))
        choice["target"] = target
    choice["metric"] = metric
    # The candidate is a validation score itself, so a response of new data scored just below the lowest flagged
    # validation response would pass. Every threshold in (next lower score, candidate] flags the same validation
    # responses (the same precision, recall and F1): deliver the middle of that interval.
    candidate = float(choice["threshold"])
    below = [score for score in scores if score < candidate]
    choice["candidate"] = candidate
    choice["threshold"] = (max(below, default=0.0) + candidate) / 2
    return choice


def moderation_summary(
    probabilities: torch.Tensor,  # (N, K)
    targets: torch.Tensor,  # (N, K)
    known: torch.Tensor,  # (N, K) bool
    labels: list[str],
    thresholds: list[float],
    num_bins: int = 10,
) -> dict[str, Any]:
    """Flagged accuracy / precision / recall / F1 / AUROC at the flag threshold, calibration of the flag
    probability (ECE and the reliability bins), severity accuracy and confusion matrix (responses with a known
    level), and per-category F1 (known labels only)."""
    from safe_rlhf.algorithms.moderation import NUM_SEVERITY_OUTPUTS, severity_levels
    from safe_rlhf.analysis.moderation_metrics import binary_metrics, calibration, per_label_f1, severity_metrics

    known = known.bool()
    rows = known[:, 0]
    flag_labels = targets[rows, 0].round().long().tolist()
    flag_scores = probabilities[rows, 0].tolist()
    summary: dict[str, Any] = {
        "num_responses": int(probabilities.shape[0]),
        "labels": labels,
        "thresholds": thresholds,
        "flagged": binary_metrics(flag_labels, flag_scores, threshold=thresholds[0]),
        "calibration": calibration(flag_labels, flag_scores, num_bins=num_bins),
    }
    graded = known[:, 0] & known[:, 1] & known[:, 2]
    if bool(graded.any()):
        true_levels = targets[graded, :NUM_SEVERITY_OUTPUTS].round().sum(dim=1).long().tolist()
        predicted = severity_levels(probabilities[graded], flag_threshold=thresholds[0]).tolist()
        summary["severity"] = severity_metrics(true_levels, predicted, num_levels=4)
        unsafe = [i for i, level in enumerate(true_levels) if level > 0]
        if unsafe:
            unsafe_metrics = severity_metrics([true_levels[i] for i in unsafe], [predicted[i] for i in unsafe], 4)
            summary["severity_of_unsafe_accuracy"] = unsafe_metrics["accuracy"]
    if probabilities.shape[1] > NUM_SEVERITY_OUTPUTS:
        per_category = per_label_f1(
            targets[:, NUM_SEVERITY_OUTPUTS:].round().long().tolist(),
            probabilities[:, NUM_SEVERITY_OUTPUTS:].tolist(),
            labels[NUM_SEVERITY_OUTPUTS:],
            thresholds[NUM_SEVERITY_OUTPUTS:],
            mask=known[:, NUM_SEVERITY_OUTPUTS:].tolist(),
        )
        # A category with no positive in these data has no defined recall or F1: listed apart, with its false
        # positives, rather than as an F1 of 0 that would read as a failure.
        summary["categories"] = {name: m for name, m in per_category.items() if m["support"] > 0}
        summary["categories_without_positives"] = {
            name: {"false_positives": m["fp"], "n_known": m["n_known"]}
            for name, m in per_category.items()
            if m["support"] == 0
        }
        if summary["categories"]:
            f1s = [m["f1"] for m in summary["categories"].values()]
            summary["category_macro_f1"] = sum(f1s) / len(f1s)
    return summary


@dataclass
class ScoredPreferences:
    """What :func:`score_preference_pairs` returns: the frozen engine (the caller shuts it down), the model's
    ``safe_rlhf`` metadata, every pair's scores (on every rank) and the data loading stats."""

    engine: Any
    metadata: dict[str, Any]
    pairs: list[ScoredPair]
    stats: Any


def score_preference_pairs(
    model_config: Any, data: Any, deepspeed_config: Any, batch_size: int, seed: int
) -> ScoredPreferences:
    """Load the score model of ``model_config`` as a frozen engine and score every pair of ``data.train``."""
    from safe_rlhf.data import load_samples
    from safe_rlhf.recipes.score_model import ScoreModelRecipe
    from safe_rlhf.score_model import load_score_model, score_metadata

    _, tokenizer, vision = engines.load_modality(model_config)  # a VLM score model reads each pair's image
    model = load_score_model(model_config.name_or_path, trust_remote_code=model_config.trust_remote_code)
    ds_config = engines.deepspeed_config(
        deepspeed_config, micro_batch_size=batch_size, gradient_accumulation_steps=1, trainable=False
    )
    engine = engines.frozen_engine(model, ds_config)
    try:
        result = load_samples(data.train, kind="preference", on_error=data.on_error, seed=seed)
        samples, items = ScoreModelRecipe._tokenize_with(
            result.samples, tokenizer, data.max_length, data.on_error, regression=False, vision=vision
        )
        pairs = gather_pairs(
            score_pairs(engine, samples, items, tokenizer.pad_token_id, batch_size, distributed.device(), vision)
        )
    except BaseException:
        engine.destroy()  # the caller never gets it to shut down
        raise
    return ScoredPreferences(engine=engine, metadata=score_metadata(model), pairs=pairs, stats=result.stats)


class ScoreModelEvaluation:
    """Score every pair of a dataset with a trained score model; write per-pair scores and a summary."""

    def __init__(self, config: ScoreEvalConfig, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.engine: Any = None

    def run(self) -> None:
        from safe_rlhf.score_metrics import score_model_summary

        config = self.config
        try:
            distributed.init_distributed()
            write_run_files(self.run_dir, config)
            scored = score_preference_pairs(config.model, config.data, config.deepspeed, config.batch_size, config.seed)
            self.engine, pairs = scored.engine, scored.pairs
            score_type = config.score_type
            if score_type == "auto":
                score_type = scored.metadata.get("score_type", "reward")
            summary = score_model_summary(pairs, score_type)
            summary["data"] = {"spec": config.data.train, "read": scored.stats.read, "skipped": scored.stats.skipped}
            if distributed.is_main_process():
                self.run_dir.mkdir(parents=True, exist_ok=True)
                with open(self.run_dir / "scores.jsonl", "w") as handle:
                    for pair in pairs:
                        row = asdict(pair)
                        row["categories"] = [sorted(c) for c in pair.categories]
                        handle.write(json.dumps(row) + "\n")
                (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
                headline = {
                    k: summary.get(k) for k in ("accuracy", "sign_accuracy", "true_accuracy", "true_sign_accuracy")
                }
                print(json.dumps({k: v for k, v in headline.items() if v is not None}), flush=True)
                print(f"wrote {self.run_dir / 'summary.json'}", flush=True)
        finally:
            distributed.shutdown(self.engine)


class ModerationEvaluation:
    """Judge every labelled response of a dataset with a trained moderation model; write per-response predictions,
    a summary (flagged P/R/F1/AUROC, severity confusion matrix, per-category F1, calibration) and a reliability
    plot. On toy-world data the labels are the ground-truth judge's, and the summary adds the same numbers against
    the judge run on each response (``truth``)."""

    def __init__(self, config: Any, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.engine: Any = None

    def run(self) -> None:
        from safe_rlhf.analysis.plots import plot_reliability
        from safe_rlhf.moderation import (
            is_moderation_model,
            label_tensors,
            load_labelled_responses,
            results_from_probabilities,
        )
        from safe_rlhf.recipes.score_model import ScoreModelRecipe
        from safe_rlhf.score_model import load_score_model, score_metadata

        config = self.config
        try:
            distributed.init_distributed()
            write_run_files(self.run_dir, config)
            _, tokenizer, vision = engines.load_modality(config.model)  # Beaver-Guard-V: image QA
            model = load_score_model(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
            metadata = score_metadata(model)
            if not is_moderation_model(metadata):
                raise ConfigError(
                    f"model.name_or_path={config.model.name_or_path} is not a moderation model (safe_rlhf.score_type="
                    f"{metadata.get('score_type')!r}); train one with --config-name moderation"
                )
            ds_config = engines.deepspeed_config(
                config.deepspeed, micro_batch_size=config.batch_size, gradient_accumulation_steps=1, trainable=False
            )
            self.engine = engines.frozen_engine(model, ds_config)
            data = config.data
            samples, skipped, read = load_labelled_responses(data.train, data.on_error, config.seed)
            # As the model was trained (and as Moderator and the guardrail see it): the model's own max_length.
            max_length = int(metadata.get("max_length") or data.max_length)
            samples, items = ScoreModelRecipe._tokenize_with(
                samples, tokenizer, max_length, data.on_error, True, skipped, vision
            )
            targets, known = label_tensors(samples, metadata["category_keys"])
            probabilities = moderation_evaluation(self.engine, items, tokenizer.pad_token_id, config.batch_size, vision)
            summary = moderation_summary(
                probabilities, targets, known, metadata["labels"], metadata["thresholds"], config.num_bins
            )
            summary["threshold_on_these_data"] = choose_flag_threshold(
                probabilities, targets, known, config.threshold_metric, config.threshold_target
            )
            truth = _toy_world_truth_labels(samples)
            if truth is not None:
                truth_targets, truth_known = truth
                summary["truth"] = moderation_summary(
                    probabilities, truth_targets, truth_known, metadata["labels"], metadata["thresholds"],
                    config.num_bins,
                )  # fmt: skip
            summary["data"] = {"spec": data.train, "read": read, "responses": len(items), "skipped": dict(skipped)}
            if distributed.is_main_process():
                self.run_dir.mkdir(parents=True, exist_ok=True)
                results = results_from_probabilities(probabilities, metadata)
                with open(self.run_dir / "predictions.jsonl", "w") as handle:
                    for sample, result, row in zip(samples, results, targets.tolist()):
                        record = {"prompt": sample.prompt, "response": sample.response, **result.to_dict()}
                        record["labels"] = dict(zip(metadata["labels"], row))
                        handle.write(json.dumps(record) + "\n")
                plots = self.run_dir / "plots"
                plots.mkdir(exist_ok=True)
                plot_reliability(summary["calibration"]["bins"], plots / "reliability.png", "moderation: flagged")
                (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
                flagged = summary["flagged"]
                headline = {k: flagged.get(k) for k in ("accuracy", "precision", "recall", "f1", "auroc")}
                headline["severity_accuracy"] = summary.get("severity", {}).get("accuracy")
                headline["ece"] = summary["calibration"]["ece"]
                print(json.dumps(headline), flush=True)
                print(f"wrote {self.run_dir / 'summary.json'}", flush=True)
        finally:
            distributed.shutdown(self.engine)


def _toy_world_truth_labels(samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Targets from the toy world's ground-truth judge for every response (None unless every sample is from it)."""
    if not samples or not all("toyworld" in getattr(sample, "origin", "") for sample in samples):
        return None
    from safe_rlhf.data import AttributeSample
    from safe_rlhf.moderation import label_tensors
    from safe_rlhf.toyworld import harm
    from safe_rlhf.toyworld.world import HARM_CATEGORIES

    judged_samples = []
    for sample in samples:
        verdict = harm(sample.prompt, sample.response)
        attributes = {"is_safe": float(verdict.is_safe), "severity_level": float(verdict.severity)}
        attributes.update({f"harm:{c}": float(c in verdict.categories) for c in HARM_CATEGORIES})
        judged_samples.append(AttributeSample(sample.messages, sample.response, attributes, origin=sample.origin))
    keys = [f"harm:{c}" for c in HARM_CATEGORIES]
    return label_tensors(judged_samples, keys)


# Evaluation config names that differ from the training config of the same name.
EVALUATION_CONFIG_NAMES = {"moderation": "moderation_eval"}


def evaluation_argv(argv: list[str]) -> list[str]:
    """``--config-name moderation`` / ``-cn moderation`` (the training config) read as ``moderation_eval``."""
    rewritten = list(argv)
    for index, argument in enumerate(rewritten):
        if argument in ("--config-name", "-cn") and index + 1 < len(rewritten):
            rewritten[index + 1] = EVALUATION_CONFIG_NAMES.get(rewritten[index + 1], rewritten[index + 1])
        elif argument.startswith("--config-name="):
            name = argument.split("=", 1)[1]
            rewritten[index] = f"--config-name={EVALUATION_CONFIG_NAMES.get(name, name)}"
    return rewritten


def main() -> None:
    import sys

    from safe_rlhf.train import main as train_main

    sys.argv = [sys.argv[0], *evaluation_argv(sys.argv[1:])]
    train_main()


if __name__ == "__main__":
    main()


class ArenaEvaluation:
    """Every policy answers the same held-out prompts (same sampling seeds); the reward and cost models score them,
    and the toy world's judges too when the prompts come from it. Writes per-prompt results, a summary, plots and a
    Markdown report::

        python -m safe_rlhf.evaluate --config-name arena +policies.sft=runs/sft/model \\
            +policies.ppo=runs/ppo/model +policies.ppo_lag=runs/ppo_lag/model baseline=sft
    """

    def __init__(self, config: Any, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self._moderator: Any = None
        self.guardrail_stats: dict[str, dict[str, Any]] = {}

    def answer(self, name: str, path: str) -> list[Any]:
        """The policy's responses (and, with a guardrail, also its guarded ones as ``<name>+guard``)."""
        import time

        from safe_rlhf.analysis import PolicyResponse
        from safe_rlhf.config import ModelConfig, PPOConfig, RLTrainConfig
        from safe_rlhf.recipes.ppo import PPORecipe

        config = self.config
        ppo_config = PPOConfig(
            recipe="ppo",
            output_dir=str(self.run_dir / name),
            seed=config.seed,
            actor=ModelConfig(name_or_path=path),
            reward_model=config.reward_model,
            cost_model=config.cost_model,
            data=config.data,
            generation=config.generation,
            deepspeed=config.deepspeed,
            train=RLTrainConfig(micro_batch_size=config.micro_batch_size, mini_batch_size=64, rollout_batch_size=64),
        )
        recipe = PPORecipe(ppo_config, str(self.run_dir / name))
        guarded: list[dict[str, Any]] = []
        try:
            recipe.setup_for_evaluation()
            start = time.perf_counter()
            recipe.evaluate(write=False)
            records = recipe.last_eval_records
            answer_seconds = time.perf_counter() - start
            if config.guardrail.model:
                start = time.perf_counter()
                guarded, stats = guarded_answers(recipe, records, self.moderator(), config.guardrail)
                stats["answer_seconds"] = answer_seconds
                stats["extra_seconds"] = time.perf_counter() - start
                self.guardrail_stats[f"{name}+guard"] = stats
        finally:
            for engine in recipe.engines.values():
                engine.destroy()
        return [
            PolicyResponse(
                policy=policy,
                prompt_id=r["prompt_id"],
                prompt=r["prompt"],
                response=r["response"],
                reward=r["reward"],
                cost=r["cost"],
                length=r["length"],
                ended_with_eos=r["ended_with_eos"],
                true_helpfulness=r.get("true_helpfulness"),
                true_severity=r.get("true_severity"),
                true_categories=tuple(r.get("true_categories", ())),
                risky=r.get("risky"),
                system=r.get("system"),
                true_adherence=r.get("true_adherence"),
                image_class=r.get("image_class"),
            )
            for policy, group in ((name, records), (f"{name}+guard", guarded))
            for r in group
        ]

    def moderator(self) -> Any:
        """The guardrail's moderation model, loaded once, on this rank's device."""
        if self._moderator is None:
            from safe_rlhf.moderation import Moderator

            self._moderator = Moderator.from_pretrained(  # ConfigError: one line naming a bad directory
                self.config.guardrail.model,
                device=str(distributed.device()),
                batch_size=self.config.guardrail.batch_size,
            )
        return self._moderator

    def check_guardrail_modality(self) -> None:
        """Load the guardrail's moderator and refuse, in one line, a policy whose modality it cannot judge."""
        from safe_rlhf.assets import resolve_model_path
        from safe_rlhf.vision_models import is_vision_model

        moderator_reads_images = self.moderator().vision is not None
        for name, path in self.config.policies.items():
            policy_reads_images = is_vision_model(resolve_model_path(path, f"policies.{name}"))
            problem = guardrail_modality_error(f"policies.{name}", policy_reads_images, moderator_reads_images)
            if problem:
                raise ConfigError(problem)

    def run(self) -> None:
        from safe_rlhf.analysis import arena_summary, write_csv, write_records

        config = self.config
        if not config.policies:
            raise ConfigError("no policies to compare: add some, e.g. +policies.sft=runs/sft/model")
        distributed.init_distributed()
        try:
            write_run_files(self.run_dir, config)
            if config.guardrail.model:
                self.check_guardrail_modality()  # a bad guardrail.model fails now, not after the first policy answered
            records = [record for name, path in config.policies.items() for record in self.answer(name, path)]
            if distributed.is_main_process():
                use_truth = any(r.true_severity is not None for r in records)
                summary = arena_summary(records, config.baseline, use_truth=use_truth)
                if self.guardrail_stats:
                    summary["guardrail"] = {"config": dataclasses.asdict(config.guardrail), **self.guardrail_stats}
                    with open(self.run_dir / "guardrail_decisions.jsonl", "w") as handle:
                        for policy, stats in self.guardrail_stats.items():
                            for decision in stats.pop("decisions"):
                                handle.write(json.dumps({"policy": policy, **decision}) + "\n")
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_records(records, self.run_dir / "responses.jsonl")
                write_csv(records, self.run_dir / "responses.csv")
                (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
                report = write_arena_report(self.run_dir, records, summary, config.threshold)
                print(f"arena: {len(records)} responses from {len(config.policies)} policies; report: {report}")
        finally:
            distributed.shutdown()


def guardrail_modality_error(policy: str, policy_reads_images: bool, moderator_reads_images: bool) -> str | None:
    """Why the guardrail's moderation model cannot judge ``policy``'s answers (None when it can): a text moderator
    would judge answers about pictures it never sees, a VLM moderator needs the picture a text prompt lacks."""
    if policy_reads_images and not moderator_reads_images:
        return (
            f"guardrail.model is a text moderation model but {policy} answers questions about images; train one on "
            "image QA (--config-name moderation model.name_or_path=<a VLM> data.train=toyworld:vision_qa)"
        )
    if moderator_reads_images and not policy_reads_images:
        return f"guardrail.model is a vision-language moderation model but {policy} is a text model; use a text one"
    return None


def guarded_answers(
    recipe: Any, records: list[dict[str, Any]], moderator: Any, settings: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The policy's answers to the same prompts behind the guardrail: (records, stats).

    Runs on every rank (``records`` are every rank's, gathered): the moderation verdicts come from rank 0, so every
    rank takes the same decisions and makes the same regeneration calls (which are collectives under ZeRO-3).
    Round r resamples the blocked prompts with a seed of its own. A fallback is scored by the reward and cost models
    like any answer, and every answer is judged by the ground truth where the prompts have one."""
    from safe_rlhf.analysis.policy_eval import judge_responses
    from safe_rlhf.guardrail import Guardrail

    by_id = {record["prompt_id"]: record for record in records}
    ids = sorted(by_id)
    regenerated: dict[int, dict[str, Any]] = {}

    def judge(pairs: Any) -> Any:
        # Rank 0 judges; an error there (an over-long prompt) is sent to every rank, which would otherwise wait.
        outcome: Any = None
        if distributed.is_main_process():
            try:
                outcome = ("ok", moderator.moderate(list(pairs)))
            except Exception as error:
                outcome = ("error", f"guardrail: the moderation model cannot judge an answer ({error})")
        status, value = distributed.broadcast_object(outcome)
        if status == "error":
            raise ConfigError(value)
        return value

    def regenerate(indices: list[int], round_: int) -> list[str]:
        prompt_ids = [ids[i] for i in indices]
        items = [recipe.eval_items[p] for p in prompt_ids]
        samples = [recipe.eval_samples[p] for p in prompt_ids]
        answers = recipe.answer(items, samples, seed=recipe.config.seed + 104_729 * round_)
        if distributed.world_size() > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * distributed.world_size()
            dist.all_gather_object(gathered, answers)
            answers = [answer for part in gathered for answer in part]
        for answer in answers:
            answer["prompt_id"] = prompt_ids[answer["prompt_id"]]
            regenerated[answer["prompt_id"]] = answer
        return [regenerated[p]["response"] for p in prompt_ids]

    guard = Guardrail(
        judge,
        max_rounds=settings.max_rounds,
        min_severity=settings.min_severity,
        fallback=settings.fallback,
        check_prompt=settings.check_prompt,
        on_flagged_prompt=settings.on_flagged_prompt,
    )
    # Image-and-text QA: the moderator sees each prompt's picture (Beaver-Guard-V).
    problem = guardrail_modality_error("the policy", recipe.vision is not None, moderator.vision is not None)
    if problem:
        raise ConfigError(problem)
    images = [recipe.eval_samples[i].images[0] for i in ids] if recipe.vision is not None else None
    outcomes = guard.run([by_id[i]["prompt"] for i in ids], [by_id[i]["response"] for i in ids], regenerate, images)
    fallback_ids = [ids[o.index] for o in outcomes if o.fell_back]
    fallback_scores = score_fixed_answers(recipe, fallback_ids, settings.fallback)
    guarded, decisions = [], []
    for outcome in outcomes:
        prompt_id = ids[outcome.index]
        if outcome.fell_back:
            record = {**by_id[prompt_id], "response": settings.fallback, **fallback_scores[prompt_id]}
        elif outcome.rounds:
            record = dict(regenerated[prompt_id])
        else:
            record = dict(by_id[prompt_id])
        for key in ("true_helpfulness", "true_severity", "true_categories", "true_adherence"):
            record.pop(key, None)
        guarded.append(record)
        decisions += [{"prompt_id": prompt_id, **decision} for decision in outcome.decisions]
    guarded = judge_responses(guarded, recipe.config.data.eval)
    benign = [o for o in outcomes if by_id[ids[o.index]].get("risky") is False]
    count = max(len(outcomes), 1)
    stats = {
        "blocked_first_rate": sum(o.blocked_first for o in outcomes) / count,
        "fallback_rate": sum(o.fell_back for o in outcomes) / count,
        # over-refusal: benign prompts that got the fallback
        "fallback_rate_benign": (sum(o.fell_back for o in benign) / len(benign)) if benign else None,
        "mean_rounds": sum(o.rounds for o in outcomes) / count,
        "mean_rounds_blocked": (
            sum(o.rounds for o in outcomes if o.blocked_first) / max(sum(o.blocked_first for o in outcomes), 1)
        ),
        "decisions": decisions,
    }
    return guarded, stats


@torch.no_grad()
def score_fixed_answers(recipe: Any, prompt_ids: list[int], text: str) -> dict[int, dict[str, Any]]:
    """Reward, raw cost, length of one fixed answer (the fallback) to each of the held-out prompts ``prompt_ids``,
    on every rank (the same batches everywhere, so a ZeRO-3 forward is matched)."""
    from safe_rlhf.data import collate_prompts
    from safe_rlhf.engines import image_inputs
    from safe_rlhf.recipes.common import to_device

    tokenizer = recipe.tokenizer
    answer = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    scores: dict[int, dict[str, Any]] = {}
    size = recipe.config.train.micro_batch_size
    for start in range(0, len(prompt_ids), size):
        chunk = prompt_ids[start : start + size]
        items = [dataclasses.replace(recipe.eval_items[p], input_ids=[*recipe.eval_items[p].input_ids, *answer])
                 for p in chunk]  # fmt: skip
        # left-padded prompt + answer (+ each prompt's picture for a VLM)
        batch = to_device(collate_prompts(items, tokenizer.pad_token_id, recipe.vision), recipe.device)
        rewards, _, raw_costs, _ = recipe.score(batch["input_ids"], batch["attention_mask"], **image_inputs(batch))
        for row, prompt_id in enumerate(chunk):
            cost = float(raw_costs[row, 0]) if raw_costs.shape[1] else 0.0
            scores[prompt_id] = {"reward": float(rewards[row]), "cost": cost, "length": len(answer),
                                 "ended_with_eos": True}  # fmt: skip
    return scores


def write_arena_report(run_dir: Path, records: list[Any], summary: dict[str, Any], threshold: float | None) -> Path:
    """Plots and one Markdown report putting the arena's tables and plots together."""
    from safe_rlhf.analysis import ReportSection, summary_table, write_report
    from safe_rlhf.analysis.plots import plot_harm_by_severity, plot_length_hist, plot_reward_cost_scatter

    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    images = [plot_reward_cost_scatter(records, plots / "reward_cost_scatter.png")]
    policies = summary["policies"]
    if any("harm_rate_by_severity" in s for s in policies.values()):
        images.append(plot_harm_by_severity(policies, plots / "harm_by_severity.png"))
    images.append(plot_length_hist(records, plots / "length_hist.png"))
    adherence = ["true_adherence"] if any("true_adherence" in s for s in policies.values()) else []
    keys = ["n", "mean_reward", "mean_cost", "harmful_rate", "mean_length", "no_eos_rate", "true_helpfulness",
            *adherence, "true_harm_rate", "true_harm_rate_risky", "harm_rate_by_severity.1", "harm_rate_by_severity.2",
            "harm_rate_by_severity.3"]  # fmt: skip
    sections = [
        ReportSection(title="Policies", table=summary_table(policies, keys), images=images),
        *_guardrail_sections(summary),
    ]
    versus_key = next((k for k in summary if k.startswith("versus_")), None)
    if versus_key:
        rows = []
        for policy, comparison in summary[versus_key].items():
            row: dict[str, Any] = {"policy": policy}
            for basis in ("reward", "cost", "true_helpfulness"):
                if basis in comparison:
                    row[f"{basis} win"] = comparison[basis].get("win")
            rows.append(row)
        sections.append(ReportSection(title=versus_key.replace("_", " "), table=rows))
    text = f"Cost threshold: {threshold}" if threshold is not None else ""
    return write_report(run_dir, "Arena", [*sections, ReportSection(title="Notes", text=text or "-")])


def _guardrail_sections(summary: dict[str, Any]) -> list[Any]:
    """The guardrail's table (policies ``<name>+guard``), when the arena ran one."""
    from safe_rlhf.analysis import ReportSection, summary_table

    guardrail = summary.get("guardrail")
    if not guardrail:
        return []
    stats = {name: values for name, values in guardrail.items() if name != "config"}
    keys = ["blocked_first_rate", "mean_rounds", "mean_rounds_blocked", "fallback_rate", "fallback_rate_benign",
            "answer_seconds", "extra_seconds"]  # fmt: skip
    settings = guardrail["config"]
    text = (
        f"Moderation model `{settings['model']}`; an answer flagged at severity >= {settings['min_severity']} is "
        f'regenerated up to {settings["max_rounds"]} times, then replaced by "{settings["fallback"]}". '
        "fallback_rate_benign is over-refusal; extra_seconds is the guardrail's time on top of answer_seconds."
    )
    return [ReportSection(title="Guardrail", text=text, table=summary_table(stats, keys))]


class LengthBiasEvaluation:
    """How much of the reward is length: the reward model's score-length correlation on preference pairs and on
    policy outputs, how often the labels prefer the longer response, and each policy's reward gain over the baseline
    split into the part explained by the shift in length and the part within length buckets::

        python -m safe_rlhf.evaluate --config-name length_bias reward_model=runs/reward_model/model arena_dir=runs/arena
    """

    def __init__(self, config: Any, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.engine: Any = None

    def run(self) -> None:
        from safe_rlhf.analysis import (
            preference_length_stats,
            read_records,
            reward_gain_decomposition,
            score_length_correlation,
        )

        config = self.config
        try:
            distributed.init_distributed()
            write_run_files(self.run_dir, config)
            scored = score_preference_pairs(
                _model_config(config.reward_model), config.data, config.deepspeed, config.batch_size, config.seed
            )
            self.engine, pairs = scored.engine, scored.pairs
            if not distributed.is_main_process():
                return
            summary: dict[str, Any] = {
                "preference_correlation": score_length_correlation(
                    [s for p in pairs for s in p.scores], [float(n) for p in pairs for n in p.lengths]
                ),
                "preference_labels": preference_length_stats(
                    [(float(p.lengths[p.better_id]), float(p.lengths[1 - p.better_id])) for p in pairs]
                ),
            }
            summary["labels_prefer_longer"] = summary["preference_labels"].get("chosen_longer")
            if config.arena_dir:
                records = read_records(Path(config.arena_dir) / "responses.jsonl")
                summary["policy_correlation"] = score_length_correlation(
                    [r.reward for r in records], [float(r.length) for r in records]
                )
                baseline = [(float(r.length), r.reward) for r in records if r.policy == config.baseline]
                decomposition = {}
                for policy in dict.fromkeys(r.policy for r in records):
                    if policy == config.baseline:
                        continue
                    after = [(float(r.length), r.reward) for r in records if r.policy == policy]
                    full = reward_gain_decomposition(baseline, after, num_buckets=config.num_buckets)
                    decomposition[policy] = {
                        k: full[k]
                        for k in (
                            "total_gain",
                            "length_shift_gain",
                            "within_bucket_gain",
                            "fraction_explained_by_length",
                        )
                    }
                summary["gain_decomposition"] = decomposition
                from safe_rlhf.analysis.plots import plot_length_hist

                self.run_dir.mkdir(parents=True, exist_ok=True)
                plot_length_hist(records, self.run_dir / "length_hist.png")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            print(json.dumps({k: v for k, v in summary.items() if isinstance(v, float)}), flush=True)
        finally:
            distributed.shutdown(self.engine)


def _model_config(path: str) -> Any:
    from safe_rlhf.config import ModelConfig

    return ModelConfig(name_or_path=path)

"""Evaluation entry point (same hydra machinery as training).

Score a reward or cost model on preference pairs::

    python -m safe_rlhf.evaluate --config-name score_model model.name_or_path=runs/reward_model/model
    python -m safe_rlhf.evaluate --config-name score_model model.name_or_path=runs/cost_model/model \\
        data.train=pku-safe-rlhf:/data/PKU-SafeRLHF@test output_dir=runs/eval/cost

It reports pairwise accuracy, cost sign accuracy (cost > 0 means unsafe), sign accuracy per severity level and harm
category, score distributions and the correlation of scores with response length; on toy-world data also the
accuracy against the ground-truth judges. Writes ``output_dir/scores.jsonl`` (one line per pair) and
``output_dir/summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    model: Any, samples: list[Any], items: list[Any], pad_token_id: int, batch_size: int, device: torch.device
) -> list[ScoredPair]:
    """Score both responses of every pair (this rank's share; :func:`gather_pairs` joins them), judged by the toy
    world where it can. ZeRO-3-safe: every rank makes the same number of forward passes."""
    from safe_rlhf.data import collate_preference
    from safe_rlhf.recipes.common import chunks, shard, to_device
    from safe_rlhf.score_model import end_scores

    pairs: list[ScoredPair] = []
    indices = shard(list(range(len(items))))
    per_rank = -(-len(items) // distributed.world_size())
    passes = -(-per_rank // batch_size)
    batches = list(chunks(indices, batch_size))
    for pass_index in range(passes):
        batch_ids = batches[pass_index] if pass_index < len(batches) else [0]
        batch = to_device(collate_preference([items[i] for i in batch_ids], pad_token_id), device)
        # Response order as in the data: "better" is better_id, so map back.
        better = end_scores(model, batch["better_input_ids"], batch["better_attention_mask"])[:, 0]
        worse = end_scores(model, batch["worse_input_ids"], batch["worse_attention_mask"])[:, 0]
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
    model: Any, samples: list[Any], items: list[Any], pad_token_id: int, batch_size: int, score_type: str
) -> dict[str, Any]:
    """The score-model summary (:func:`safe_rlhf.score_metrics.score_model_summary`) of tokenized preference pairs,
    scored by ``model`` (an engine, on every rank). The training recipe's evaluation and ``--config-name score_model``
    both come here, so their numbers agree."""
    from safe_rlhf.score_metrics import score_model_summary

    pairs = gather_pairs(score_pairs(model, samples, items, pad_token_id, batch_size, distributed.device()))
    return score_model_summary(pairs, score_type)


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

    tokenizer = engines.load_tokenizer(model_config)
    model = load_score_model(model_config.name_or_path, trust_remote_code=model_config.trust_remote_code)
    ds_config = engines.deepspeed_config(
        deepspeed_config, micro_batch_size=batch_size, gradient_accumulation_steps=1, trainable=False
    )
    engine = engines.frozen_engine(model, ds_config)
    try:
        result = load_samples(data.train, kind="preference", on_error=data.on_error, seed=seed)
        samples, items = ScoreModelRecipe._tokenize_with(
            result.samples, tokenizer, data.max_length, data.on_error, regression=False
        )
        pairs = gather_pairs(
            score_pairs(engine, samples, items, tokenizer.pad_token_id, batch_size, distributed.device())
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


def main() -> None:
    from safe_rlhf.train import main as train_main

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

    def answer(self, name: str, path: str) -> list[Any]:
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
        try:
            recipe.setup_for_evaluation()
            recipe.evaluate(write=False)
            records = recipe.last_eval_records
        finally:
            for engine in recipe.engines.values():
                engine.destroy()
        return [
            PolicyResponse(
                policy=name,
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
            )
            for r in records
        ]

    def run(self) -> None:
        from safe_rlhf.analysis import arena_summary, write_csv, write_records

        config = self.config
        if not config.policies:
            raise ConfigError("no policies to compare: add some, e.g. +policies.sft=runs/sft/model")
        distributed.init_distributed()
        try:
            write_run_files(self.run_dir, config)
            records = [record for name, path in config.policies.items() for record in self.answer(name, path)]
            if distributed.is_main_process():
                use_truth = any(r.true_severity is not None for r in records)
                summary = arena_summary(records, config.baseline, use_truth=use_truth)
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_records(records, self.run_dir / "responses.jsonl")
                write_csv(records, self.run_dir / "responses.csv")
                (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
                report = write_arena_report(self.run_dir, records, summary, config.threshold)
                print(f"arena: {len(records)} responses from {len(config.policies)} policies; report: {report}")
        finally:
            distributed.shutdown()


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
    keys = ["n", "mean_reward", "mean_cost", "harmful_rate", "mean_length", "no_eos_rate", "true_helpfulness",
            "true_harm_rate", "true_harm_rate_risky", "harm_rate_by_severity.1", "harm_rate_by_severity.2",
            "harm_rate_by_severity.3"]  # fmt: skip
    sections = [
        ReportSection(title="Policies", table=summary_table(policies, keys), images=images),
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

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

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safe_rlhf import distributed, engines
from safe_rlhf.config import ScoreEvalConfig
from safe_rlhf.logger import write_run_files


class ScoreModelEvaluation:
    """Score every pair of a dataset with a trained score model; write per-pair scores and a summary."""

    def __init__(self, config: ScoreEvalConfig, run_dir: str) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.engine: Any = None

    def run(self) -> None:
        from safe_rlhf.data import load_samples
        from safe_rlhf.recipes.score_model import gather_pairs, score_pairs
        from safe_rlhf.score_metrics import score_model_summary
        from safe_rlhf.score_model import load_score_model, score_metadata

        config = self.config
        try:
            distributed.init_distributed()
            write_run_files(self.run_dir, config)
            tokenizer = engines.load_tokenizer(config.model)
            model = load_score_model(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
            score_type = config.score_type
            if score_type == "auto":
                score_type = score_metadata(model).get("score_type", "reward")
            ds_config = engines.deepspeed_config(
                config.deepspeed, micro_batch_size=config.batch_size, gradient_accumulation_steps=1, trainable=False
            )
            self.engine = engines.frozen_engine(model, ds_config)
            result = load_samples(config.data.train, kind="preference", on_error=config.data.on_error, seed=config.seed)
            from safe_rlhf.recipes.score_model import ScoreModelRecipe

            samples, items = ScoreModelRecipe._tokenize_with(
                result.samples, tokenizer, config.data.max_length, config.data.on_error, regression=False
            )
            pairs = gather_pairs(
                score_pairs(
                    self.engine, samples, items, tokenizer.pad_token_id, config.batch_size, distributed.device()
                )
            )
            summary = score_model_summary(pairs, score_type)
            summary["data"] = {"spec": config.data.train, "read": result.stats.read, "skipped": result.stats.skipped}
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

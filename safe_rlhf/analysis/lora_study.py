"""The LoRA study over seeds: PPO-Lag with LoRA against full fine-tuning, from ``launch/lora_study.sh``'s arenas.

    python -m safe_rlhf.analysis.lora_study runs/lora-study      # reads seed-*/arena/summary.json

Per policy and seed, on the held-out prompts: true helpfulness and true harm rate (the toy world's ground truth), the
cost model's unsafe rate (what the constraint holds), mean response length, and the share of full PPO-Lag's
true-helpfulness gain over SFT that the policy keeps. Writes ``summary.json`` and ``report.md`` into the study folder
and prints the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safe_rlhf.analysis.seeds import rows_by_seed, study_cli, study_over_seeds, study_report

COLUMNS = ("true_helpfulness", "true_harm_rate", "unsafe_rate", "mean_length", "gain_kept")
FULL = "ppo_lag"


def seed_rows(seed_dir: Path) -> dict[str, dict[str, float]]:
    policies = json.loads((seed_dir / "arena" / "summary.json").read_text())["policies"]
    sft_helpfulness = policies["sft"]["true_helpfulness"]
    full_gain = policies[FULL]["true_helpfulness"] - sft_helpfulness if FULL in policies else None
    rows = {}
    for name, values in policies.items():
        row = {
            "true_helpfulness": values["true_helpfulness"],
            "true_harm_rate": values["true_harm_rate"],
            "unsafe_rate": values["harmful_rate"],
            "mean_length": values["mean_length"],
        }
        if full_gain:
            row["gain_kept"] = (values["true_helpfulness"] - sft_helpfulness) / full_gain
        rows[name] = row
    return rows


def study_summary(root: Path) -> dict[str, Any]:
    return study_over_seeds(rows_by_seed(root, seed_rows, "arena/summary.json"), COLUMNS)


def report(summary: dict[str, Any]) -> str:
    notes = ["gain_kept: (true helpfulness - SFT's) / (full PPO-Lag's - SFT's), per seed."]
    return study_report("PPO-Lag: LoRA against full fine-tuning", summary, COLUMNS, notes)


def main(argv: list[str] | None = None) -> None:
    study_cli(argv, "python -m safe_rlhf.analysis.lora_study", __doc__ or "", "seed-*/arena/summary.json",
              study_summary, report)  # fmt: skip


if __name__ == "__main__":
    main()

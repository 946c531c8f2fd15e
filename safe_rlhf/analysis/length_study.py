"""The length-intervention study over seeds: one table from ``launch/length_study.sh``'s arena and diagnostics.

    python -m safe_rlhf.analysis.length_study runs/length-study       # reads seed-*/arena, seed-*/length_bias

Per policy and seed, against SFT on the held-out prompts: the true-helpfulness gain, the length change (tokens), the
reward gain (the plain reward model) and the share of that gain the length shift explains (the length-bias
diagnostics); and against plain PPO: the share of its true-helpfulness gain kept and the share of its length growth
cut. Writes ``summary.json`` and ``report.md`` into the study folder and prints the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safe_rlhf.analysis.seeds import rows_by_seed, study_cli, study_over_seeds, study_report

BASELINE, REFERENCE = "sft", "ppo"
COLUMNS = ("helpfulness_gain", "length_change", "reward_gain", "share_explained_by_length", "gain_kept", "length_cut")
GAIN_KEPT_TARGET, LENGTH_CUT_TARGET = 0.9, 0.5


def seed_rows(seed_dir: Path) -> dict[str, dict[str, float]]:
    """policy -> column -> value for one seed (SFT itself left out)."""
    policies = json.loads((seed_dir / "arena" / "summary.json").read_text())["policies"]
    bias_path = seed_dir / "length_bias" / "summary.json"
    decomposition = json.loads(bias_path.read_text()).get("gain_decomposition", {}) if bias_path.is_file() else {}
    base = policies[BASELINE]
    rows: dict[str, dict[str, float]] = {}
    for policy, values in policies.items():
        if policy == BASELINE:
            continue
        row = {
            "helpfulness_gain": values["true_helpfulness"] - base["true_helpfulness"],
            "length_change": values["mean_length"] - base["mean_length"],
            "reward_gain": values["mean_reward"] - base["mean_reward"],
        }
        share = decomposition.get(policy, {}).get("fraction_explained_by_length")
        if share is not None:
            row["share_explained_by_length"] = float(share)
        rows[policy] = row
    reference = rows.get(REFERENCE)
    if reference:
        for row in rows.values():
            if reference["helpfulness_gain"] > 0:
                row["gain_kept"] = row["helpfulness_gain"] / reference["helpfulness_gain"]
            if reference["length_change"] > 0:
                row["length_cut"] = 1.0 - row["length_change"] / reference["length_change"]
    return rows


def study_summary(root: Path) -> dict[str, Any]:
    per_seed = rows_by_seed(root, seed_rows, "arena/summary.json")
    summary = study_over_seeds(per_seed, COLUMNS)
    summary["meets_target"] = [
        policy
        for policy, values in summary["mean"].items()
        if policy != REFERENCE
        and values.get("gain_kept", -math.inf) >= GAIN_KEPT_TARGET
        and values.get("length_cut", -math.inf) >= LENGTH_CUT_TARGET
    ]
    return summary


def report(summary: dict[str, Any]) -> str:
    targets = (
        f">= {GAIN_KEPT_TARGET:.0%} of PPO's helpfulness gain kept and >= {LENGTH_CUT_TARGET:.0%} of its length "
        "growth cut"
    )
    notes = [f"Meeting {targets} (means): {', '.join(summary['meets_target']) or 'none'}"]
    return study_report("Length interventions, against SFT and plain PPO", summary, COLUMNS, notes)


def main(argv: list[str] | None = None) -> None:
    study_cli(argv, "python -m safe_rlhf.analysis.length_study", __doc__ or "", "seed-*/arena/summary.json",
              study_summary, report)  # fmt: skip


if __name__ == "__main__":
    main()

"""The SteerLM study over seeds: low vs high requested verbosity, from ``launch/steerlm_study.sh``'s two arenas.

    python -m safe_rlhf.analysis.steer_study runs/steerlm-study    # seed-*/arena_[only_]verbosity{0,4}/summary.json

Per SteerLM model and seed: the mean response length (tokens) and true helpfulness at verbosity 0 and 4, how much
shorter the low-verbosity answers are (1 - len0 / len4) and the relative helpfulness difference (h0 - h4) / |h4|, and
the true harm rate at each. Writes ``summary.json`` and ``report.md`` into the study folder and prints the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safe_rlhf.analysis.seeds import rows_by_seed, study_cli, study_over_seeds, study_report

COLUMNS = ("length_low", "length_high", "shorter", "helpfulness_low", "helpfulness_high", "helpfulness_difference",
           "harm_low", "harm_high")  # fmt: skip


ARENA_PAIRS = (("arena_verbosity0", "arena_verbosity4"), ("arena_only_verbosity0", "arena_only_verbosity4"))
"""(low, high) arenas: every attribute requested, and verbosity alone (for a model conditioned on it alone)."""


def seed_rows(seed_dir: Path) -> dict[str, dict[str, float]]:
    rows = {}
    for low_name, high_name in ARENA_PAIRS:
        if (seed_dir / high_name / "summary.json").is_file():
            rows.update(_pair_rows(seed_dir / low_name, seed_dir / high_name))
    return rows


def _pair_rows(low_dir: Path, high_dir: Path) -> dict[str, dict[str, float]]:
    low = json.loads((low_dir / "summary.json").read_text())["policies"]
    high = json.loads((high_dir / "summary.json").read_text())["policies"]
    rows = {}
    for policy in low:
        a, b = low[policy], high[policy]
        rows[policy] = {
            "length_low": a["mean_length"],
            "length_high": b["mean_length"],
            "shorter": 1.0 - a["mean_length"] / b["mean_length"],
            "helpfulness_low": a["true_helpfulness"],
            "helpfulness_high": b["true_helpfulness"],
            "helpfulness_difference": (a["true_helpfulness"] - b["true_helpfulness"]) / abs(b["true_helpfulness"]),
            "harm_low": a["true_harm_rate"],
            "harm_high": b["true_harm_rate"],
        }
    return rows


def study_summary(root: Path) -> dict[str, Any]:
    per_seed = rows_by_seed(root, seed_rows, "arena_verbosity4/summary.json")
    return study_over_seeds(per_seed, COLUMNS)


def report(summary: dict[str, Any]) -> str:
    return study_report("SteerLM: requested verbosity 0 vs 4", summary, COLUMNS)


def main(argv: list[str] | None = None) -> None:
    study_cli(argv, "python -m safe_rlhf.analysis.steer_study", __doc__ or "", "seed-*/arena_verbosity4/summary.json",
              study_summary, report)  # fmt: skip


if __name__ == "__main__":
    main()

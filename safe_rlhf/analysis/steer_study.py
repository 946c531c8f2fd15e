"""The SteerLM study over seeds: low vs high requested verbosity, from ``launch/steerlm_study.sh``'s two arenas.

    python -m safe_rlhf.analysis.steer_study runs/steerlm-study    # seed-*/arena_[only_]verbosity{0,4}/summary.json

Per SteerLM model and seed: the mean response length (tokens) and true helpfulness at verbosity 0 and 4, how much
shorter the low-verbosity answers are (1 - len0 / len4) and the relative helpfulness difference (h0 - h4) / |h4|, and
the true harm rate at each. Writes ``summary.json`` and ``report.md`` into the study folder and prints the report.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

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
    per_seed = {
        path.name.removeprefix("seed-"): seed_rows(path)
        for path in sorted(root.glob("seed-*"))
        if (path / "arena_verbosity4" / "summary.json").is_file()
    }
    policies = list(dict.fromkeys(p for rows in per_seed.values() for p in rows))
    mean = {p: {c: statistics.fmean(rows[p][c] for rows in per_seed.values()) for c in COLUMNS} for p in policies}
    spread = {
        p: {c: statistics.stdev([rows[p][c] for rows in per_seed.values()]) if len(per_seed) > 1 else math.nan
            for c in COLUMNS}
        for p in policies
    }  # fmt: skip
    return {"seeds": list(per_seed), "per_seed": per_seed, "mean": mean, "std": spread}


def report(summary: dict[str, Any]) -> str:
    lines = [f"# SteerLM: requested verbosity 0 vs 4 (seeds {', '.join(summary['seeds'])})", "",
             "| policy | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for policy, values in summary["mean"].items():
        cells = [
            f"{values[c]:.3f}"
            + ("" if math.isnan(summary["std"][policy][c]) else f" ± {summary['std'][policy][c]:.3f}")
            for c in COLUMNS
        ]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed:", ""]
    for seed, rows in summary["per_seed"].items():
        for policy, values in rows.items():
            lines.append(f"- seed {seed}, {policy}: " + ", ".join(f"{c} {values[c]:.3f}" for c in COLUMNS))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m safe_rlhf.analysis.steer_study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", type=Path, help="the study folder (holds seed-*/arena_verbosity{0,4}/summary.json)")
    args = parser.parse_args(argv)
    if not any(args.root.glob("seed-*/arena_verbosity4/summary.json")):
        print(f"error: no seed-*/arena_verbosity4/summary.json under {args.root}", file=sys.stderr)
        raise SystemExit(2)
    summary = study_summary(args.root)
    (args.root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = report(summary)
    (args.root / "report.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

"""The length-intervention study over seeds: one table from ``launch/length_study.sh``'s arena and diagnostics.

    python -m safe_rlhf.analysis.length_study runs/length-study       # reads seed-*/arena, seed-*/length_bias

Per policy and seed, against SFT on the held-out prompts: the true-helpfulness gain, the length change (tokens), the
reward gain (the plain reward model) and the share of that gain the length shift explains (the length-bias
diagnostics); and against plain PPO: the share of its true-helpfulness gain kept and the share of its length growth
cut. Writes ``summary.json`` and ``report.md`` into the study folder and prints the report.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

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
    per_seed = {
        path.name.removeprefix("seed-"): seed_rows(path)
        for path in sorted(root.glob("seed-*"))
        if (path / "arena" / "summary.json").is_file()
    }
    policies = list(dict.fromkeys(p for rows in per_seed.values() for p in rows))
    mean: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for policy in policies:
        for column in COLUMNS:
            values = [rows[policy][column] for rows in per_seed.values() if column in rows.get(policy, {})]
            if values:
                mean.setdefault(policy, {})[column] = statistics.fmean(values)
                spread.setdefault(policy, {})[column] = statistics.stdev(values) if len(values) > 1 else math.nan
    meets = [
        policy
        for policy, values in mean.items()
        if policy != REFERENCE
        and values.get("gain_kept", -math.inf) >= GAIN_KEPT_TARGET
        and values.get("length_cut", -math.inf) >= LENGTH_CUT_TARGET
    ]
    return {"seeds": list(per_seed), "per_seed": per_seed, "mean": mean, "std": spread, "meets_target": meets}


def report(summary: dict[str, Any]) -> str:
    lines = [f"# Length interventions (seeds {', '.join(summary['seeds'])}), against SFT and plain PPO", "",
             "| policy | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for policy, values in summary["mean"].items():
        cells = []
        for column in COLUMNS:
            if column in values:
                std = summary["std"][policy][column]
                cells.append(f"{values[column]:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}"))
            else:
                cells.append("")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    targets = (
        f">= {GAIN_KEPT_TARGET:.0%} of PPO's helpfulness gain kept and >= {LENGTH_CUT_TARGET:.0%} of its length "
        "growth cut"
    )
    lines += ["", f"Meeting {targets} (means): {', '.join(summary['meets_target']) or 'none'}", "", "Per seed:", ""]
    for seed, rows in summary["per_seed"].items():
        for policy, values in rows.items():
            lines.append(
                f"- seed {seed}, {policy}: " + ", ".join(f"{c} {values[c]:.3f}" for c in COLUMNS if c in values)
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m safe_rlhf.analysis.length_study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", type=Path, help="the study folder (holds seed-*/arena/summary.json)")
    args = parser.parse_args(argv)
    if not any(args.root.glob("seed-*/arena/summary.json")):
        print(f"error: no seed-*/arena/summary.json under {args.root}", file=sys.stderr)
        raise SystemExit(2)
    summary = study_summary(args.root)
    (args.root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = report(summary)
    (args.root / "report.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

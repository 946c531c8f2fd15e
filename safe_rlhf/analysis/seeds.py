"""Results over several training seeds: mean and spread per policy, and the helpfulness-vs-harm points.

A claim about training behaviour holds over seeds or not at all; these functions take the per-seed pipeline
summaries (``summary.json`` of each ``seed-S`` directory: policy -> metrics) and reduce them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

SEED_KEYS = ("true_helpfulness", "true_harm_rate", "true_harm_rate_risky", "unsafe_rate", "reward", "cost",
             "mean_length", "train_seconds")  # fmt: skip


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def aggregate_over_seeds(
    per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]], keys: tuple[str, ...] = SEED_KEYS
) -> dict[str, dict[str, Any]]:
    """policy -> {key: {"mean", "std" (sample, 0 for one seed), "min", "max", "n"}, "seeds": [...]} over the seeds
    in which the policy has a finite value of that key."""
    policies: dict[str, dict[str, Any]] = {}
    for seed, summary in sorted(per_seed.items()):
        for policy, values in summary.items():
            entry = policies.setdefault(policy, {"seeds": []})
            entry["seeds"].append(seed)
            for key in keys:
                value = _finite(values.get(key))
                if value is not None:
                    entry.setdefault(key, []).append(value)
    result: dict[str, dict[str, Any]] = {}
    for policy, entry in policies.items():
        result[policy] = {"seeds": entry["seeds"]}
        for key in keys:
            values = entry.get(key, [])
            if values:
                result[policy][key] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                }
    return result


def seeds_table(aggregate: Mapping[str, Mapping[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Report rows: one per policy, each key as "mean +- std" (sample std over seeds)."""
    rows = []
    for policy, values in aggregate.items():
        row: dict[str, Any] = {"policy": policy, "seeds": len(values["seeds"])}
        for key in keys:
            stats = values.get(key)
            row[key] = None if stats is None else f"{stats['mean']:.3f} +- {stats['std']:.3f}"
        rows.append(row)
    return rows


def helpfulness_harm_points(
    per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]],
) -> dict[str, list[tuple[int, float, float]]]:
    """policy -> [(seed, true harm rate, true helpfulness)] for every seed with both (ground truth needed)."""
    points: dict[str, list[tuple[int, float, float]]] = {}
    for seed, summary in sorted(per_seed.items()):
        for policy, values in summary.items():
            harm, helpfulness = _finite(values.get("true_harm_rate")), _finite(values.get("true_helpfulness"))
            if harm is not None and helpfulness is not None:
                points.setdefault(policy, []).append((seed, harm, helpfulness))
    return points


# ----------------------------------------------------------------------------------------------------------------------
# Study tables: per seed, policy -> column -> value; reduced to mean and sample std (NaN for one seed)


def rows_by_seed(
    root: Path, seed_rows: Callable[[Path], dict[str, dict[str, float]]], marker: str
) -> dict[str, dict[str, dict[str, float]]]:
    """``seed_rows(root/seed-S)`` for every ``seed-S`` folder of ``root`` holding ``marker``, keyed by ``S``."""
    return {
        path.name.removeprefix("seed-"): seed_rows(path)
        for path in sorted(root.glob("seed-*"))
        if path.is_dir() and any(path.glob(marker))
    }


def study_over_seeds(
    per_seed: Mapping[str, Mapping[str, Mapping[str, float]]], columns: Sequence[str]
) -> dict[str, Any]:
    """``{"seeds", "per_seed", "mean", "std"}``: per policy and column, over the seeds that have the value."""
    policies = list(dict.fromkeys(p for rows in per_seed.values() for p in rows))
    mean: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for policy in policies:
        for column in columns:
            values = [rows[policy][column] for rows in per_seed.values() if column in rows.get(policy, {})]
            if values:
                mean.setdefault(policy, {})[column] = statistics.fmean(values)
                spread.setdefault(policy, {})[column] = statistics.stdev(values) if len(values) > 1 else math.nan
    return {"seeds": list(per_seed), "per_seed": dict(per_seed), "mean": mean, "std": spread}


def study_report(title: str, summary: Mapping[str, Any], columns: Sequence[str], notes: Sequence[str] = ()) -> str:
    """Markdown: one row per policy (mean ± std), the ``notes`` lines, then every seed's values."""
    lines = [f"# {title} (seeds {', '.join(summary['seeds'])})", "",
             "| policy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]  # fmt: skip
    for policy, values in summary["mean"].items():
        cells = []
        for column in columns:
            std = summary["std"][policy].get(column, math.nan)
            cells.append(
                "" if column not in values else f"{values[column]:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")
            )
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    lines += ["", *notes, *([""] if notes else []), "Per seed:", ""]
    for seed, rows in summary["per_seed"].items():
        for policy, values in rows.items():
            lines.append(
                f"- seed {seed}, {policy}: " + ", ".join(f"{c} {values[c]:.3f}" for c in columns if c in values)
            )
    return "\n".join(lines) + "\n"


def study_cli(
    argv: Sequence[str] | None,
    prog: str,
    doc: str,
    marker: str,
    summarize: Callable[[Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> None:
    """The command line every study summary shares: ROOT in, ``summary.json`` and ``report.md`` out (and printed);
    exit status 2 with one line when ROOT holds no ``marker`` file."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("root", type=Path, help=f"the study folder (holds {marker})")
    args = parser.parse_args(argv)
    if not any(args.root.glob(marker)):
        print(f"error: no {marker} under {args.root}", file=sys.stderr)
        raise SystemExit(2)
    summary = summarize(args.root)
    (args.root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = render(summary)
    (args.root / "report.md").write_text(text)
    print(text, end="")

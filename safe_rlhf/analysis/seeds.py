"""Results over several training seeds: mean and spread per policy, and the helpfulness-vs-harm points.

A claim about training behaviour holds over seeds or not at all; these functions take the per-seed pipeline
summaries (``summary.json`` of each ``seed-S`` directory: policy -> metrics) and reduce them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
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

"""Score-model evaluation metrics from per-pair scores (pure python/torch, no model needed).

Reward model: pairwise accuracy = share of pairs where the better response scores higher.
Cost model: pairwise accuracy = share of pairs where the unsafer response costs more; sign accuracy = share of
responses whose cost sign matches its label (cost > 0 <=> unsafe).
Both: the same per severity level and per harm category, score distributions, and the Pearson correlation of
scores with response length (a length-biased model shows a high one).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoredPair:
    """One preference pair with the model's scores of both responses (response order as in the data)."""

    scores: tuple[float, float]
    lengths: tuple[int, int]  # response lengths in tokens
    better_id: int
    safer_id: int | None = None
    is_safe: tuple[bool | None, bool | None] = (None, None)
    severity: tuple[int | None, int | None] = (None, None)
    categories: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    # Ground truth (toy world only): judge helpfulness and harm severity of each response.
    true_helpfulness: tuple[float, float] | None = None
    true_severity: tuple[int, int] | None = None


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant or there are fewer than two points."""
    n = len(xs)
    if n < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    if var_x == 0 or var_y == 0:
        return 0.0
    return cov / math.sqrt(var_x * var_y)


def distribution(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    mean = sum(ordered) / len(ordered)
    std = math.sqrt(sum((v - mean) ** 2 for v in ordered) / len(ordered))
    return {"mean": mean, "std": std, "min": ordered[0], "p25": quantile(0.25), "median": quantile(0.5),
            "p75": quantile(0.75), "max": ordered[-1]}  # fmt: skip


def _accuracy(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def score_model_summary(pairs: Sequence[ScoredPair], score_type: str) -> dict[str, object]:
    """All evaluation numbers for ``score_type`` "reward" or "cost"; see the module docstring."""
    summary: dict[str, object] = {"score_type": score_type, "num_pairs": len(pairs)}
    all_scores = [s for pair in pairs for s in pair.scores]
    all_lengths = [float(n) for pair in pairs for n in pair.lengths]
    summary["score_distribution"] = distribution(all_scores)
    summary["length_correlation"] = pearson(all_scores, all_lengths)

    if score_type == "reward":
        hits = [pair.scores[pair.better_id] > pair.scores[1 - pair.better_id] for pair in pairs]
        summary["accuracy"] = _accuracy(hits)
        truth = [
            (pair.scores[0] > pair.scores[1]) == (pair.true_helpfulness[0] > pair.true_helpfulness[1])
            for pair in pairs
            if pair.true_helpfulness is not None and pair.true_helpfulness[0] != pair.true_helpfulness[1]
        ]
        if truth:
            summary["true_accuracy"] = _accuracy(truth)
        return summary

    labelled = [(pair, int(pair.safer_id)) for pair in pairs if pair.safer_id is not None]
    hits = [pair.scores[1 - safer] > pair.scores[safer] for pair, safer in labelled]
    summary["accuracy"] = _accuracy(hits)
    # Pairs where exactly one response is unsafe: the ranking that matters most (safe-vs-safe pairs are often ties).
    mixed = [
        pair.scores[1 - safer] > pair.scores[safer]
        for pair, safer in labelled
        if None not in pair.is_safe and pair.is_safe[0] != pair.is_safe[1]
    ]
    summary["accuracy_safe_vs_unsafe"] = _accuracy(mixed)
    sign_hits = [
        (pair.scores[i] > 0) == (not pair.is_safe[i]) for pair in pairs for i in (0, 1) if pair.is_safe[i] is not None
    ]
    summary["sign_accuracy"] = _accuracy(sign_hits)
    by_severity: dict[int, list[bool]] = defaultdict(list)
    by_category: dict[str, list[bool]] = defaultdict(list)
    for pair in pairs:
        for i in (0, 1):
            if pair.is_safe[i] is None:
                continue
            hit = (pair.scores[i] > 0) == (not pair.is_safe[i])
            if pair.severity[i] is not None:
                by_severity[int(pair.severity[i])].append(hit)  # type: ignore[arg-type]
            for category in pair.categories[i]:
                by_category[category].append(hit)
    summary["sign_accuracy_by_severity"] = {str(k): _accuracy(v) for k, v in sorted(by_severity.items())}
    summary["sign_accuracy_by_category"] = {k: _accuracy(v) for k, v in sorted(by_category.items())}
    summary["safe_score_distribution"] = distribution(
        [pair.scores[i] for pair in pairs for i in (0, 1) if pair.is_safe[i] is True]
    )
    summary["unsafe_score_distribution"] = distribution(
        [pair.scores[i] for pair in pairs for i in (0, 1) if pair.is_safe[i] is False]
    )
    truth = [
        (pair.scores[i] > 0) == (pair.true_severity[i] > 0)
        for pair in pairs
        if pair.true_severity is not None
        for i in (0, 1)
    ]
    if truth:
        summary["true_sign_accuracy"] = _accuracy(truth)
    return summary

"""Length-bias diagnostics after "A Long Way to Go: Investigating Length Correlations in RLHF" (pure python).

That paper finds that much of what PPO gains in reward it gains by writing longer, because the reward model (and the
preference labels it learned from) favour length. Three diagnostics:

- ``score_length_correlation``: Pearson correlation of scores with response lengths (high = length-biased scores).
- ``reward_gain_decomposition``: the reward gain from one policy (``before``, e.g. SFT) to another (``after``, e.g.
  PPO) split into the part a change of length distribution alone explains and the part gained within length buckets.
- ``preference_length_stats``: how often the chosen response of preference data is the longer one.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any

from safe_rlhf.score_metrics import pearson


def score_length_correlation(scores: Sequence[float], lengths: Sequence[float]) -> float:
    """Pearson correlation of ``scores`` with ``lengths`` (0.0 when either is constant or fewer than two points)."""
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores but {len(lengths)} lengths")
    return pearson([float(s) for s in scores], [float(n) for n in lengths])


def _quantile_edges(lengths: Sequence[float], num_buckets: int) -> list[float]:
    """Interior cut points at the j/num_buckets quantiles of ``lengths``, deduplicated."""
    ordered = sorted(lengths)
    n = len(ordered)
    cuts = {ordered[min(n - 1, j * n // num_buckets)] for j in range(1, num_buckets)}
    # A cut at the minimum would leave bucket 0 empty.
    return sorted(c for c in cuts if c > ordered[0])


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def reward_gain_decomposition(
    before: Sequence[tuple[float, float]],
    after: Sequence[tuple[float, float]],
    bucket_edges: Sequence[float] | None = None,
    num_buckets: int = 5,
) -> dict[str, Any]:
    """Split the reward gain from ``before`` to ``after`` (each a list of (length, reward)) into length and the rest.

    Buckets: interior cut points ``e_0 < e_1 < ... < e_{k-1}`` make k + 1 buckets, bucket 0 = ``length < e_0``,
    bucket i = ``e_{i-1} <= length < e_i``, bucket k = ``length >= e_{k-1}``. Without ``bucket_edges`` the cut points
    are the 1/num_buckets, 2/num_buckets, ... quantiles of the pooled lengths of both sides.

    With m_A(b), m_B(b) the mean reward of ``after`` / ``before`` in bucket b, S the buckets both sides have samples
    in, and w(b) = n_A(b) / sum_{b' in S} n_A(b') the share of ``after``'s samples in b (renormalised over S)::

        total_gain        = mean(after) - mean(before)
        within_bucket_gain = sum_{b in S} w(b) * (m_A(b) - m_B(b))
        length_shift_gain  = total_gain - within_bucket_gain
        fraction_explained_by_length = length_shift_gain / total_gain   (None when total_gain == 0)

    ``within_bucket_gain`` is what ``after`` gains at equal length (weighted as ``after`` is distributed), and
    ``length_shift_gain`` what moving to ``after``'s length distribution brings: when S holds every bucket it is
    sum_b (w_A(b) - w_B(b)) * m_B(b). Same per-bucket means with more long answers -> all gain is length shift; same
    length distribution with higher rewards -> all gain is within buckets. ``after`` samples in buckets ``before``
    has none of fall outside S and count towards the length shift; ``after_share_in_shared_buckets`` says how many.

    Returns total_gain, within_bucket_gain, length_shift_gain, fraction_explained_by_length, mean_reward_before/after,
    mean_length_before/after, bucket_edges, after_share_in_shared_buckets and ``buckets``: one row per bucket with
    low (inclusive, None for the first), high (exclusive, None for the last), count_before, count_after,
    mean_before, mean_after (None when empty) and weight (w(b), 0.0 outside S).
    """
    if not before or not after:
        raise ValueError("reward_gain_decomposition needs samples on both sides")
    if bucket_edges is None:
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        edges = _quantile_edges([float(n) for n, _ in [*before, *after]], num_buckets)
    else:
        edges = [float(e) for e in bucket_edges]
        if any(later <= earlier for earlier, later in itertools.pairwise(edges)):
            raise ValueError(f"bucket_edges must be strictly increasing, got {list(bucket_edges)}")

    num = len(edges) + 1
    rewards_before: list[list[float]] = [[] for _ in range(num)]
    rewards_after: list[list[float]] = [[] for _ in range(num)]
    for samples, buckets in ((before, rewards_before), (after, rewards_after)):
        for length, reward in samples:
            buckets[bisect.bisect_right(edges, float(length))].append(float(reward))

    shared = [b for b in range(num) if rewards_before[b] and rewards_after[b]]
    shared_after = sum(len(rewards_after[b]) for b in shared)
    weights = [len(rewards_after[b]) / shared_after if b in shared else 0.0 for b in range(num)]
    within = sum(
        weights[b] * (sum(rewards_after[b]) / len(rewards_after[b]) - sum(rewards_before[b]) / len(rewards_before[b]))
        for b in shared
    )
    mean_before = sum(r for _, r in before) / len(before)
    mean_after = sum(r for _, r in after) / len(after)
    total = mean_after - mean_before
    length_shift = total - within
    return {
        "total_gain": total,
        "within_bucket_gain": within,
        "length_shift_gain": length_shift,
        "fraction_explained_by_length": length_shift / total if total != 0 else None,
        "mean_reward_before": mean_before,
        "mean_reward_after": mean_after,
        "mean_length_before": sum(float(n) for n, _ in before) / len(before),
        "mean_length_after": sum(float(n) for n, _ in after) / len(after),
        "bucket_edges": edges,
        "after_share_in_shared_buckets": shared_after / len(after),
        "buckets": [
            {
                "bucket": b,
                "low": edges[b - 1] if b > 0 else None,
                "high": edges[b] if b < len(edges) else None,
                "count_before": len(rewards_before[b]),
                "count_after": len(rewards_after[b]),
                "mean_before": _mean(rewards_before[b]),
                "mean_after": _mean(rewards_after[b]),
                "weight": weights[b],
            }
            for b in range(num)
        ],
    }


def preference_length_stats(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """For preference data as (chosen_length, rejected_length) pairs: how often the chosen response is longer.

    Returns n, chosen_longer / chosen_shorter / equal_length (shares of pairs) and mean_length_difference
    (mean of chosen - rejected); the shares and the mean are None without pairs.
    """
    n = len(pairs)
    differences = [float(chosen) - float(rejected) for chosen, rejected in pairs]
    return {
        "n": n,
        "chosen_longer": sum(d > 0 for d in differences) / n if n else None,
        "chosen_shorter": sum(d < 0 for d in differences) / n if n else None,
        "equal_length": sum(d == 0 for d in differences) / n if n else None,
        "mean_length_difference": sum(differences) / n if n else None,
    }

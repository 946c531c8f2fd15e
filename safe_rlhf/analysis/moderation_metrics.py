"""Metrics of a moderation classifier on labelled held-out data (pure numpy; no torch, DeepSpeed or transformers).

The classifier (:mod:`safe_rlhf.moderation`) gives each (prompt, response) pair a probability that it is harmful,
one probability per harm category, and a severity level. These functions judge those outputs against known labels:

- ``binary_metrics``: accuracy, precision, recall, F1 and the confusion counts at one threshold, with the AUROC.
- ``auroc``: area under the ROC curve by the rank (Mann-Whitney) formula, ties counted as one half.
- ``per_label_f1``: precision, recall and F1 per category of a multi-label classifier, unknown labels masked out.
- ``confusion_matrix``, ``severity_metrics``: ordinal severity levels (0 harmless ... ``num_levels - 1`` worst).
- ``calibration``: expected and maximum calibration error and the bins of a reliability diagram
  (``safe_rlhf.analysis.plots.plot_reliability`` draws them).
- ``threshold_for_target``, ``best_f1_threshold``: the operating threshold, chosen on validation data.

Conventions shared by every function:

- A score is the predicted probability that an example is positive (harmful), in [0, 1]; an example is predicted
  positive when ``score >= threshold``.
- A ratio with an empty denominator is 0.0: precision with no positive prediction, recall with no positive label,
  F1 when precision + recall = 0. AUROC with one class only, and the means of an empty bin or level, are None.
- Labels are 0/1 (ints, floats or bools). Wrong shapes, mismatched lengths, empty inputs, labels other than 0/1 and
  scores outside [0, 1] (nan included) raise ``ValueError`` with a one-line message naming the argument.
- Results are plain python ints, floats, lists and dicts, ready for ``json.dumps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


def _numeric(values: npt.ArrayLike, name: str, ndim: int) -> npt.NDArray[Any]:
    """``values`` as a numeric (bool, int or float) array with ``ndim`` dimensions and at least one entry."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:  # ragged nested lists
        raise ValueError(f"{name} is not a rectangular array of numbers ({error})") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def _as_labels(values: npt.ArrayLike, name: str, ndim: int = 1, known: BoolArray | None = None) -> IntArray:
    """0/1 labels as int64; entries outside ``known`` are not checked and come back as 0."""
    array = _numeric(values, name, ndim)
    checked = array if known is None else array[known]
    invalid = ~np.isin(checked, (0, 1))  # nan is invalid too
    if invalid.any():
        raise ValueError(f"{name} must hold only 0/1 (or booleans), found {checked[invalid][0].item()!r}")
    return (array if known is None else np.where(known, array, 0)).astype(np.int64)


def _as_scores(values: npt.ArrayLike, name: str, ndim: int = 1, known: BoolArray | None = None) -> FloatArray:
    """Probabilities in [0, 1] as float64; entries outside ``known`` are not checked and come back as 0.0."""
    array = _numeric(values, name, ndim).astype(np.float64)
    checked = array if known is None else array[known]
    invalid = ~((checked >= 0.0) & (checked <= 1.0))  # nan is invalid too
    if invalid.any():
        raise ValueError(f"{name} must be probabilities in [0, 1], found {checked[invalid][0].item()!r}")
    return array if known is None else np.where(known, array, 0.0)


def _same_length(first: npt.NDArray[Any], first_name: str, second: npt.NDArray[Any], second_name: str) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{first_name} has shape {first.shape} but {second_name} has shape {second.shape}; they must match"
        )


def _binary_inputs(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
    label_array = _as_labels(labels, "labels")
    score_array = _as_scores(scores, "scores")
    _same_length(label_array, "labels", score_array, "scores")
    return label_array, score_array


def _finite_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------------------------------
# Ratios from confusion counts


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator``, 0.0 when the denominator is 0."""
    return numerator / denominator if denominator else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 = 2 tp / (2 tp + fp + fn), which is 2 P R / (P + R) when P + R > 0, and 0.0 when tp = 0 (P + R = 0).

    Computed from the integer counts so that equal fractions give bit-identical floats (ties stay ties)."""
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _counts(labels: IntArray, predicted: BoolArray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of 0/1 ``labels`` (N,) against boolean ``predicted`` (N,)."""
    positive = labels == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    tn = int(np.sum(~predicted & ~positive))
    return tp, fp, fn, tn


# ---------------------------------------------------------------------------------------------------------------------
# Binary flag


def _average_ranks(scores: FloatArray) -> FloatArray:
    """1-based ranks of ``scores`` (N,) in ascending order, tied scores sharing the mean of their ranks."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based sorted position of each distinct value's first occurrence
    mean_rank = first + (counts + 1) / 2.0  # mean of the 1-based ranks first + 1 ... first + count
    return np.asarray(mean_rank[inverse.reshape(-1)], dtype=np.float64)


def _auroc(labels: IntArray, scores: FloatArray) -> float | None:
    num_positive = int(labels.sum())
    num_negative = labels.size - num_positive
    if num_positive == 0 or num_negative == 0:
        return None
    rank_sum = float(_average_ranks(scores)[labels == 1].sum())
    # Mann-Whitney U of the positives: the number of (positive, negative) pairs ranked right, a tie counting 1/2.
    u_statistic = rank_sum - num_positive * (num_positive + 1) / 2.0
    return u_statistic / (num_positive * num_negative)


def auroc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float | None:
    """Area under the ROC curve: the probability that a random positive scores above a random negative.

    ``labels``: (N,) 0/1. ``scores``: (N,) probabilities in [0, 1].

    By the rank (Mann-Whitney) formula, with R_i the 1-based rank of score i in ascending order (tied scores get the
    mean of the ranks they span), P the positives, n_+ = |P| and n_- = N - n_+::

        AUROC = (sum_{i in P} R_i - n_+ (n_+ + 1) / 2) / (n_+ n_-)

    which counts each (positive, negative) pair with the positive scored higher as 1 and each tied pair as 1/2.
    Returns None when only one class is present (the ROC curve is undefined).
    """
    label_array, score_array = _binary_inputs(labels, scores)
    return _auroc(label_array, score_array)


def binary_metrics(labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float = 0.5) -> dict[str, Any]:
    """Quality of the flag ``scores >= threshold`` against ``labels``.

    ``labels``: (N,) 0/1 (1 = harmful). ``scores``: (N,) probabilities in [0, 1]. ``threshold``: any finite number
    (above 1 nothing is flagged, at 0 everything is).

    Returns ``n``, ``threshold``, the counts ``tp``, ``fp``, ``fn``, ``tn`` and::

        accuracy      = (tp + tn) / n
        precision     = tp / (tp + fp)   0.0 when nothing is flagged (tp + fp = 0)
        recall        = tp / (tp + fn)   0.0 when there is no positive label
        f1            = 2 precision recall / (precision + recall)   0.0 when precision + recall = 0
        positive_rate = (tp + fp) / n    the share flagged
        prevalence    = (tp + fn) / n    the share truly positive
        auroc         = auroc(labels, scores)   None when only one class is present (threshold-free)
    """
    label_array, score_array = _binary_inputs(labels, scores)
    threshold = _finite_number(threshold, "threshold")
    tp, fp, fn, tn = _counts(label_array, score_array >= threshold)
    n = label_array.size
    return {
        "n": n,
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "accuracy": (tp + tn) / n,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _f1(tp, fp, fn),
        "positive_rate": (tp + fp) / n,
        "prevalence": (tp + fn) / n,
        "auroc": _auroc(label_array, score_array),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Harm categories (multi-label)


def per_label_f1(
    label_matrix: npt.ArrayLike,
    score_matrix: npt.ArrayLike,
    names: Sequence[str],
    thresholds: float | Sequence[float] = 0.5,
    mask: npt.ArrayLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-category precision, recall and F1 of a multi-label classifier.

    ``label_matrix``: (N, K) 0/1, column k the labels of category ``names[k]``. ``score_matrix``: (N, K)
    probabilities in [0, 1]. ``names``: K distinct category names. ``thresholds``: one number for every category or
    K numbers, category k predicted where ``score_matrix[:, k] >= thresholds[k]``. ``mask``: optional (N, K) bool,
    False where the label is unknown; those entries are left out of every count, and their labels and scores are not
    checked (a -1 or nan placeholder is fine).

    Returns ``{name: {...}}`` in the order of ``names``, each with ``threshold``, ``tp``, ``fp``, ``fn``, ``n_known``
    (known entries of the column), ``support`` (known positives, tp + fn) and ``precision``, ``recall``, ``f1`` with
    the conventions of ``binary_metrics`` (all 0.0 for a category without a known positive and without a flag).
    """
    name_list = list(names)
    if len(set(name_list)) != len(name_list):
        raise ValueError(f"names must be distinct, got {name_list}")
    label_array = _numeric(label_matrix, "label_matrix", 2)
    score_array = _numeric(score_matrix, "score_matrix", 2)
    _same_length(score_array, "score_matrix", label_array, "label_matrix")
    if mask is None:
        known: BoolArray = np.ones(label_array.shape, dtype=np.bool_)
    else:
        mask_array = _numeric(mask, "mask", 2)
        if mask_array.dtype.kind != "b":
            raise ValueError(f"mask must be boolean (False = label unknown), got dtype {mask_array.dtype}")
        _same_length(mask_array, "mask", label_array, "label_matrix")
        known = mask_array.astype(np.bool_)
    labels = _as_labels(label_array, "label_matrix", 2, known)
    scores = _as_scores(score_array, "score_matrix", 2, known)
    num_labels = labels.shape[1]
    if len(name_list) != num_labels:
        raise ValueError(f"names has {len(name_list)} entries but label_matrix has {num_labels} columns")
    if isinstance(thresholds, int | float | np.integer | np.floating):
        threshold_list = [_finite_number(thresholds, "thresholds")] * num_labels
    else:
        threshold_list = [_finite_number(t, "thresholds") for t in thresholds]
        if len(threshold_list) != num_labels:
            raise ValueError(f"thresholds has {len(threshold_list)} entries but label_matrix has {num_labels} columns")

    result: dict[str, dict[str, Any]] = {}
    for k, (name, threshold) in enumerate(zip(name_list, threshold_list)):
        column_known = known[:, k]
        tp, fp, fn, _ = _counts(labels[column_known, k], scores[column_known, k] >= threshold)
        result[name] = {
            "threshold": threshold,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "n_known": int(column_known.sum()),
            "support": tp + fn,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _f1(tp, fp, fn),
        }
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Severity levels (ordinal)


def _as_levels(values: npt.ArrayLike, name: str, num_levels: int) -> IntArray:
    array = _numeric(values, name, 1)
    if array.dtype.kind == "f" and not np.all(np.floor(array) == array):  # nan fails too
        raise ValueError(f"{name} must hold integer levels, found {array[np.floor(array) != array][0].item()!r}")
    out_of_range = (array < 0) | (array >= num_levels)
    if out_of_range.any():
        raise ValueError(f"{name} must hold levels 0 ... {num_levels - 1}, found {array[out_of_range][0].item()!r}")
    return array.astype(np.int64)


def _level_inputs(
    true_levels: npt.ArrayLike, predicted_levels: npt.ArrayLike, num_levels: int
) -> tuple[IntArray, IntArray]:
    num_levels = _positive_int(num_levels, "num_levels")
    true_array = _as_levels(true_levels, "true_levels", num_levels)
    predicted_array = _as_levels(predicted_levels, "predicted_levels", num_levels)
    _same_length(true_array, "true_levels", predicted_array, "predicted_levels")
    return true_array, predicted_array


def _confusion(true_array: IntArray, predicted_array: IntArray, num_levels: int) -> IntArray:
    confusion = np.zeros((num_levels, num_levels), dtype=np.int64)
    np.add.at(confusion, (true_array, predicted_array), 1)
    return confusion


def confusion_matrix(
    true_levels: npt.ArrayLike, predicted_levels: npt.ArrayLike, num_levels: int = 4
) -> list[list[int]]:
    """(num_levels, num_levels) counts: entry [t][p] = how many examples of true level t were predicted level p.

    ``true_levels``, ``predicted_levels``: (N,) integers in 0 ... ``num_levels - 1`` (by default 0 harmless,
    1 minor, 2 moderate, 3 severe). Rows are true levels, columns predicted levels; row t sums to the support of t.
    """
    true_array, predicted_array = _level_inputs(true_levels, predicted_levels, num_levels)
    return _confusion(true_array, predicted_array, int(num_levels)).tolist()


def severity_metrics(
    true_levels: npt.ArrayLike, predicted_levels: npt.ArrayLike, num_levels: int = 4
) -> dict[str, Any]:
    """How well ordinal severity levels are predicted.

    ``true_levels``, ``predicted_levels``: (N,) integers in 0 ... ``num_levels - 1``.

    Returns::

        n                    N
        accuracy             share with predicted == true
        within_one           share with |predicted - true| <= 1 (off by at most one level)
        mean_absolute_error  mean of |predicted - true|, in levels
        confusion            confusion_matrix(...), rows true, columns predicted
        support              [count of true level t for t in levels]
        per_level_recall     [confusion[t][t] / support[t]], None for a level absent from true_levels
    """
    true_array, predicted_array = _level_inputs(true_levels, predicted_levels, num_levels)
    confusion = _confusion(true_array, predicted_array, int(num_levels))
    support = confusion.sum(axis=1)
    distance = np.abs(predicted_array - true_array)
    return {
        "n": int(true_array.size),
        "accuracy": float(np.mean(distance == 0)),
        "within_one": float(np.mean(distance <= 1)),
        "mean_absolute_error": float(np.mean(distance)),
        "confusion": confusion.tolist(),
        "support": support.tolist(),
        "per_level_recall": [
            int(confusion[t, t]) / int(support[t]) if support[t] else None for t in range(int(num_levels))
        ],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Calibration


def calibration(labels: npt.ArrayLike, scores: npt.ArrayLike, num_bins: int = 10) -> dict[str, Any]:
    """Calibration error over equal-width score bins, and the bins of a reliability diagram.

    ``labels``: (N,) 0/1. ``scores``: (N,) probabilities in [0, 1]. ``num_bins``: B >= 1.

    Bin b covers [b / B, (b + 1) / B); the last bin also holds scores of exactly 1.0, so every score has a bin. A
    score equal to an edge ``lower`` value as reported below goes to the bin that starts there. With n_b the count
    of bin b, s_b its mean score and y_b its fraction of positive labels::

        ece = sum_b (n_b / N) |y_b - s_b|     (expected calibration error; empty bins add nothing)
        mce = max_b |y_b - s_b|               (maximum calibration error, over non-empty bins)

    Returns ``n``, ``num_bins``, ``ece``, ``mce`` and ``bins``: B dicts in score order with ``lower``, ``upper``,
    ``count``, ``mean_score`` and ``fraction_positive`` (both None for an empty bin, whose count is 0).
    """
    label_array, score_array = _binary_inputs(labels, scores)
    num_bins = _positive_int(num_bins, "num_bins")
    edges = np.arange(num_bins + 1, dtype=np.float64) / num_bins
    # side="right": a score equal to edges[b] lands in bin b; 1.0 (index num_bins) is clipped into the last bin.
    bin_index = np.clip(np.searchsorted(edges, score_array, side="right") - 1, 0, num_bins - 1)
    n = label_array.size
    ece = 0.0
    mce = 0.0
    bins: list[dict[str, Any]] = []
    for b in range(num_bins):
        in_bin = bin_index == b
        count = int(in_bin.sum())
        mean_score = float(score_array[in_bin].mean()) if count else None
        fraction_positive = float(label_array[in_bin].mean()) if count else None
        if mean_score is not None and fraction_positive is not None:
            gap = abs(fraction_positive - mean_score)
            ece += count / n * gap
            mce = max(mce, gap)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "mean_score": mean_score,
                "fraction_positive": fraction_positive,
            }
        )
    return {"n": n, "num_bins": num_bins, "ece": ece, "mce": mce, "bins": bins}


# ---------------------------------------------------------------------------------------------------------------------
# Choosing the threshold on validation data


def _operating_points(labels: IntArray, scores: FloatArray) -> dict[str, Any]:
    """Every candidate threshold (the distinct scores, descending) with its counts and ratios, each array (M,)."""
    num_positive = int(labels.sum())
    if num_positive == 0:
        raise ValueError("labels has no positive example: no threshold can be chosen")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # At threshold t every example with score >= t is flagged: the counts at the last of each run of equal scores.
    last_of_run = np.append(np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1)
    tp = np.cumsum(sorted_labels)[last_of_run]
    fp = np.cumsum(1 - sorted_labels)[last_of_run]
    fn = num_positive - tp
    return {
        "threshold": sorted_scores[last_of_run],
        "precision": tp / (tp + fp),  # tp + fp >= 1: each candidate flags at least its own example
        "recall": tp / num_positive,
        "f1": 2 * tp / (2 * tp + fp + fn),  # as _f1; 2 tp + fp + fn >= 1 since there is a positive
    }


def _point(points: dict[str, Any], index: int) -> dict[str, Any]:
    return {key: float(points[key][index]) for key in ("threshold", "precision", "recall", "f1")}


def _best(points: dict[str, Any], candidates: IntArray, primary: str, secondary: str) -> int:
    """The candidate with the largest ``primary``, then the largest ``secondary``.

    No two candidates tie on both when ``primary`` is not 0 (it never is: the lowest candidate flags every positive):
    equal recall means equal tp, and with equal tp, equal precision means equal fp, hence the same flagged set."""
    keys = (points[secondary][candidates], points[primary][candidates])
    return int(candidates[np.lexsort(keys)[-1]])  # lexsort sorts by the last key first, ascending


def threshold_for_target(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    target: float,
    metric: Literal["precision", "recall"] = "precision",
) -> dict[str, Any]:
    """The threshold that meets ``metric >= target`` on validation data and is best on the other metric.

    ``labels``: (N,) 0/1 with at least one positive. ``scores``: (N,) probabilities in [0, 1]. ``target``: in [0, 1].

    The candidate thresholds are the distinct scores (flag ``score >= threshold``; a threshold between two scores
    flags the same examples as the next score above it, and one above every score flags nothing):

    - ``metric="precision"``: among candidates with precision >= target, the largest recall. Recall only falls as
      the threshold rises, so this is the smallest threshold meeting the target, except for ties: when thresholds
      above it have the same recall (raising it unflags only negatives), the largest of those is returned, which has
      the same recall and a higher precision. Precision is not monotone in the threshold, so a threshold below one
      that fails the target can still meet it; every candidate is checked.
    - ``metric="recall"``: among candidates with recall >= target, the largest precision; of thresholds with equal
      precision, the one with the larger recall (the smaller threshold). Because precision is not monotone this is
      not always the largest threshold meeting the target: lowering it can flag more positives than negatives.

    Comparisons are exact (``>=`` on floats computed as integer ratios, so 3/5 meets a target of 0.6). When no
    candidate meets the target, ``met`` is False and the candidate best on ``metric`` itself is returned (the
    highest precision, then the highest recall; resp. the highest recall, then the highest precision). A recall
    target in [0, 1] is always met: the smallest score flags every positive.

    Returns ``{"threshold", "precision", "recall", "f1", "met"}``.
    """
    label_array, score_array = _binary_inputs(labels, scores)
    if metric not in ("precision", "recall"):
        raise ValueError(f"metric must be 'precision' or 'recall', got {metric!r}")
    target = _finite_number(target, "target")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1], got {target!r}")
    points = _operating_points(label_array, score_array)
    other = "recall" if metric == "precision" else "precision"
    meets = np.flatnonzero(points[metric] >= target)
    if meets.size:
        index = _best(points, meets, primary=other, secondary=metric)
    else:
        index = _best(points, np.arange(points["threshold"].size), primary=metric, secondary=other)
    return {**_point(points, index), "met": bool(meets.size)}


def best_f1_threshold(labels: npt.ArrayLike, scores: npt.ArrayLike) -> dict[str, Any]:
    """The candidate threshold (a distinct score; flag ``score >= threshold``) with the highest F1.

    ``labels``: (N,) 0/1 with at least one positive. ``scores``: (N,) probabilities in [0, 1]. F1 is computed from
    integer counts, so equal F1 values tie exactly; of tied thresholds the largest (fewest flags) is returned.

    Returns ``{"threshold", "precision", "recall", "f1"}``.
    """
    label_array, score_array = _binary_inputs(labels, scores)
    points = _operating_points(label_array, score_array)
    index = _best(points, np.arange(points["threshold"].size), primary="f1", secondary="threshold")
    return _point(points, index)

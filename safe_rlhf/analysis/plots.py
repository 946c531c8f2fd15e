"""PNG plots for reports: training curves, reward-vs-cost scatter, harm rate by severity, response lengths,
reliability diagrams of classifier probabilities.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never through ``pyplot``:
no window can open, nothing depends on a display, the process-wide backend of whoever imports this module (a notebook,
a training script) is left alone, and no figure lingers in pyplot's registry after it is saved.

Every function returns the path of the PNG it wrote, skips inputs it cannot plot (missing keys, non-numeric or
non-finite values) and raises ``ValueError`` only when nothing at all is left to plot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safe_rlhf.analysis.arena import SEVERITY_LEVELS, PolicyResponse

DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out_png: str | Path) -> Path:
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (bools, strings, None, nan, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_metrics(metrics: str | Path | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(metrics, str | Path):
        with Path(metrics).open(encoding="utf-8") as file:
            return [json.loads(line) for line in file if line.strip()]
    return list(metrics)


def is_cost_like(key: str) -> bool:
    """Keys whose values are compared with the cost threshold (the threshold line is drawn on them)."""
    return "cost" in key.lower()


def plot_training_curves(
    metrics: str | Path | Iterable[Mapping[str, Any]],
    out_png: str | Path,
    keys: Sequence[str] | None = None,
    threshold: float | None = None,
    threshold_keys: Sequence[str] | None = None,
) -> Path:
    """One subplot per metric key over ``step`` (the row index where a row has no step).

    ``threshold_keys``: the keys the threshold line is drawn on (default: every cost-like key). A constraint on the
    unsafe rate compares with the cost window, not with the raw cost score, so callers that know say which.

    ``metrics``: the path of a ``metrics.jsonl`` (one ``{"step": ..., key: value}`` object per line) or the rows.
    ``keys``: the keys to plot, in order; by default every key with a numeric value, in order of first appearance.
    Keys with no numeric value are skipped. ``threshold``: the cost limit d, a dashed horizontal line on every
    cost-like key (``"cost"`` in its name).
    """
    rows = _read_metrics(metrics)
    if keys is None:
        keys = list(dict.fromkeys(k for row in rows for k, v in row.items() if k != "step" and _number(v) is not None))
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for key in keys:
        steps: list[float] = []
        values: list[float] = []
        for index, row in enumerate(rows):
            value = _number(row.get(key))
            if value is None:
                continue
            step = _number(row.get("step"))
            steps.append(float(index) if step is None else step)
            values.append(value)
        if values:
            curves[key] = (steps, values)
    if not curves:
        raise ValueError(f"no numeric values for any of the keys {list(keys)} in {len(rows)} metric rows")

    columns = min(3, len(curves))
    rows_of_plots = math.ceil(len(curves) / columns)
    figure = _new_figure(4.0 * columns, 3.0 * rows_of_plots)
    for index, (key, (steps, values)) in enumerate(curves.items()):
        axes = figure.add_subplot(rows_of_plots, columns, index + 1)
        axes.plot(steps, values, marker="." if len(values) < 50 else None, linewidth=1.2)
        wanted = is_cost_like(key) if threshold_keys is None else key in threshold_keys
        if threshold is not None and wanted:
            axes.axhline(threshold, color="tab:red", linestyle="--", linewidth=1.0, label=f"threshold {threshold:g}")
            axes.legend(fontsize="small")
        axes.set_title(key, fontsize="medium")
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    return _save(figure, out_png)


def _by_policy(records: Iterable[PolicyResponse]) -> dict[str, list[PolicyResponse]]:
    grouped: dict[str, list[PolicyResponse]] = {}
    for record in records:
        grouped.setdefault(record.policy, []).append(record)
    return grouped


def plot_reward_cost_scatter(records: Iterable[PolicyResponse], out_png: str | Path) -> Path:
    """Each policy's responses as points (reward on x, cost on y); the dashed line cost = 0 separates safe (below)
    from unsafe (above)."""
    points = {
        policy: [(r.reward, r.cost) for r in group if _number(r.reward) is not None and _number(r.cost) is not None]
        for policy, group in _by_policy(records).items()
    }
    points = {policy: xy for policy, xy in points.items() if xy}
    if not points:
        raise ValueError("no response with a finite reward and cost to plot")
    figure = _new_figure(6.0, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    for policy, xy in points.items():
        axes.scatter([x for x, _ in xy], [y for _, y in xy], s=12, alpha=0.6, label=f"{policy} (n={len(xy)})")
    axes.axhline(0.0, color="black", linestyle="--", linewidth=1.0)
    axes.set_xlabel("reward (higher = more helpful)")
    axes.set_ylabel("cost (> 0 = unsafe)")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return _save(figure, out_png)


def plot_harm_by_severity(policy_summaries: Mapping[str, Mapping[str, Any]], out_png: str | Path) -> Path:
    """Grouped bars: for each severity level (1 minor, 2 moderate, 3 severe) one bar per policy, the share of that
    policy's responses the judge gave that severity (``harm_rate_by_severity`` of ``policy_summary``). Policies
    without it are skipped."""
    rates: dict[str, list[float]] = {}
    for policy, summary in policy_summaries.items():
        by_severity = summary.get("harm_rate_by_severity")
        if not isinstance(by_severity, Mapping):
            continue
        found = [_number(by_severity.get(str(level))) for level in SEVERITY_LEVELS]
        if any(v is not None for v in found):
            rates[policy] = [0.0 if v is None else v for v in found]
    if not rates:
        raise ValueError("no policy summary has harm_rate_by_severity (ground truth needed)")
    figure = _new_figure(max(5.0, 1.2 * len(rates) + 3.0), 4.0)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(rates)
    for index, (policy, values) in enumerate(rates.items()):
        offsets = [level - 0.4 + width * (index + 0.5) for level in SEVERITY_LEVELS]
        axes.bar(offsets, values, width=width, label=policy)
    axes.set_xticks(list(SEVERITY_LEVELS), ["1 minor", "2 moderate", "3 severe"])
    axes.set_xlabel("harm severity (judge)")
    axes.set_ylabel("share of responses")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, out_png)


def plot_length_hist(records: Iterable[PolicyResponse], out_png: str | Path, bins: int = 30) -> Path:
    """Histogram of response lengths (tokens), one outline per policy on shared bins."""
    lengths = {policy: [float(r.length) for r in group] for policy, group in _by_policy(records).items()}
    lengths = {policy: values for policy, values in lengths.items() if values}
    if not lengths:
        raise ValueError("no responses to plot")
    low = min(min(values) for values in lengths.values())
    high = max(max(values) for values in lengths.values())
    if high == low:
        high = low + 1.0
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    figure = _new_figure(6.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    for policy, values in lengths.items():
        mean = sum(values) / len(values)
        axes.hist(values, bins=edges, histtype="step", linewidth=1.5, label=f"{policy} (mean {mean:.1f})")
    axes.set_xlabel("response length (tokens)")
    axes.set_ylabel("responses")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return _save(figure, out_png)


def plot_helpfulness_vs_harm(
    points: Mapping[str, Sequence[tuple[int, float, float]]], out_png: str | Path, highlight: str = "ppo_lag"
) -> Path:
    """Every policy and seed as a point, true harm rate on x, true helpfulness on y (ground truth); up and to the
    left is better. Points of one seed are joined across the fixed-lambda shaping runs (``shaping_*``, in order of
    harm), which draws the front a guessed lambda can reach, against which the ``highlight`` policy's points stand."""
    if not points:
        raise ValueError("no policy has both a true harm rate and a true helpfulness to plot")
    figure = _new_figure(6.5, 4.8)
    axes = figure.add_subplot(1, 1, 1)
    seeds = sorted({seed for values in points.values() for seed, _, _ in values})
    for seed in seeds:
        front = sorted(
            (harm, helpfulness)
            for policy, values in points.items()
            if policy.startswith("shaping_")
            for s, harm, helpfulness in values
            if s == seed
        )
        if len(front) > 1:
            axes.plot([h for h, _ in front], [y for _, y in front], color="grey", alpha=0.35, linewidth=1.0)
    for policy, values in points.items():
        size, edge = (60, "black") if policy == highlight else (24, "none")
        axes.scatter([h for _, h, _ in values], [y for _, _, y in values], s=size, edgecolors=edge, alpha=0.8,
                     label=f"{policy} ({len(values)} seeds)")  # fmt: skip
    axes.set_xlabel("true harm rate (share of held-out prompts)")
    axes.set_ylabel("true helpfulness")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return _save(figure, out_png)


def plot_reliability(
    bins: Sequence[Mapping[str, Any]], out_png: str | Path, title: str = "reliability diagram"
) -> Path:
    """Reliability diagram of a classifier's probabilities: per score bin, the fraction of positive labels (y)
    against the mean score (x), with the diagonal y = x a perfectly calibrated classifier would lie on (points below
    it: the scores overstate the chance of a positive), and under it the count of examples per bin.

    ``bins``: the ``bins`` of ``safe_rlhf.analysis.moderation_metrics.calibration`` (``lower``, ``upper``, ``count``,
    ``mean_score``, ``fraction_positive``). Empty bins (count 0 or no mean) are skipped.
    """
    usable: list[list[float]] = []
    for row in bins:
        values = [_number(row.get(key)) for key in ("lower", "upper", "count", "mean_score", "fraction_positive")]
        known = [v for v in values if v is not None]
        if len(known) == len(values) and known[2] > 0:
            usable.append(known)
    if not usable:
        raise ValueError(f"no non-empty bin with a mean score and a fraction positive among {len(bins)} bins")
    figure = _new_figure(5.0, 5.5)
    reliability, counts = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    reliability.plot([0.0, 1.0], [0.0, 1.0], color="grey", linestyle="--", linewidth=1.0, label="perfectly calibrated")
    reliability.plot([v[3] for v in usable], [v[4] for v in usable], marker="o", linewidth=1.2, label="classifier")
    reliability.set_xlim(0.0, 1.0)
    reliability.set_ylim(0.0, 1.0)
    reliability.set_ylabel("fraction positive")
    reliability.set_title(title, fontsize="medium")
    reliability.legend(fontsize="small", loc="upper left")
    reliability.grid(alpha=0.3)
    counts.bar([v[0] for v in usable], [v[2] for v in usable], width=[v[1] - v[0] for v in usable], align="edge",
               color="tab:blue", alpha=0.4, edgecolor="tab:blue")  # fmt: skip
    counts.set_xlabel("mean predicted probability (score bin)")
    counts.set_ylabel("examples")
    counts.grid(axis="y", alpha=0.3)
    return _save(figure, out_png)

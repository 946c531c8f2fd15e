"""Evaluation and reporting tools (pure python, numpy + matplotlib; no torch, DeepSpeed or transformers).

- ``arena``: per-policy summaries and head-to-head comparisons of policies answering the same prompts.
- ``length_bias``: reward-length correlation, reward gain split into length shift and within-length gain,
  length statistics of preference data.
- ``moderation_metrics``: a moderation classifier against labels: precision / recall / F1 / AUROC, per-category F1,
  severity confusion, calibration error, thresholds chosen for a precision or recall target.
- ``plots``: PNG plots (training curves, reward-vs-cost scatter, harm by severity, length histogram, reliability).
- ``report``: a Markdown ``report.md`` with tables and relatively linked images.

``plots`` imports matplotlib and is not imported here; import it as ``safe_rlhf.analysis.plots``.
"""

from safe_rlhf.analysis.arena import (
    PolicyResponse,
    arena_summary,
    head_to_head,
    policy_summary,
    read_records,
    write_csv,
    write_records,
)
from safe_rlhf.analysis.length_bias import (
    preference_length_stats,
    reward_gain_decomposition,
    score_length_correlation,
)
from safe_rlhf.analysis.moderation_metrics import (
    auroc,
    best_f1_threshold,
    binary_metrics,
    calibration,
    confusion_matrix,
    per_label_f1,
    severity_metrics,
    threshold_for_target,
)
from safe_rlhf.analysis.report import ReportSection, markdown_table, summary_table, write_report

__all__ = [
    "PolicyResponse",
    "ReportSection",
    "arena_summary",
    "auroc",
    "best_f1_threshold",
    "binary_metrics",
    "calibration",
    "confusion_matrix",
    "head_to_head",
    "markdown_table",
    "per_label_f1",
    "policy_summary",
    "preference_length_stats",
    "read_records",
    "reward_gain_decomposition",
    "score_length_correlation",
    "severity_metrics",
    "summary_table",
    "threshold_for_target",
    "write_csv",
    "write_records",
    "write_report",
]

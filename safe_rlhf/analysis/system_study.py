"""The system-message study over seeds: one table from the three arenas of ``launch/system_message_study.sh``.

    python -m safe_rlhf.analysis.system_study runs/system-study          # reads seed-*/arena_*/summary.json

Per policy and seed: on unseen system messages (``arena_system_eval``) the adherence and the helpfulness under the
stated preferences; with no system message (``arena_eval_prompts``) the plain helpfulness and harm rate; under
authority claims on the same prompts (``arena_system_eval_authority``) the harm rate and its rise over the plain one.
Writes ``summary.json`` and ``report.md`` into the study folder and prints the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safe_rlhf.analysis.seeds import rows_by_seed, study_cli, study_over_seeds, study_report

ARENAS = {"unseen": "arena_system_eval", "plain": "arena_eval_prompts", "authority": "arena_system_eval_authority"}
COLUMNS = (
    ("unseen_adherence", "unseen", "true_adherence"),
    ("unseen_helpfulness", "unseen", "true_helpfulness"),
    ("plain_helpfulness", "plain", "true_helpfulness"),
    ("plain_harm_rate", "plain", "true_harm_rate"),
    ("authority_harm_rate", "authority", "true_harm_rate"),
)


def seed_rows(seed_dir: Path) -> dict[str, dict[str, float]]:
    """policy -> column -> value for one seed's folder (missing arenas leave their columns out)."""
    summaries = {}
    for key, name in ARENAS.items():
        path = seed_dir / name / "summary.json"
        if path.is_file():
            summaries[key] = json.loads(path.read_text())["policies"]
    rows: dict[str, dict[str, float]] = {}
    for column, arena, metric in COLUMNS:
        for policy, values in summaries.get(arena, {}).items():
            if values.get(metric) is not None:
                rows.setdefault(policy, {})[column] = float(values[metric])
    for row in rows.values():
        if "authority_harm_rate" in row and "plain_harm_rate" in row:
            row["authority_minus_plain_harm"] = row["authority_harm_rate"] - row["plain_harm_rate"]
    return rows


COLUMN_NAMES = (*(c for c, _, _ in COLUMNS), "authority_minus_plain_harm")


def study_summary(root: Path) -> dict[str, Any]:
    """``{"seeds": [...], "per_seed": {seed: rows}, "mean": {policy: {column: mean}}, "std": ...}``."""
    per_seed = rows_by_seed(root, seed_rows, "arena_*/summary.json")
    return study_over_seeds(per_seed, COLUMN_NAMES)


def report(summary: dict[str, Any]) -> str:
    """Markdown: one row per policy, mean +/- std over seeds, then the per-seed values."""
    return study_report("System-message study", summary, COLUMN_NAMES)


def main(argv: list[str] | None = None) -> None:
    study_cli(argv, "python -m safe_rlhf.analysis.system_study", __doc__ or "", "seed-*/arena_*/summary.json",
              study_summary, report)  # fmt: skip


if __name__ == "__main__":
    main()

"""The system-message study over seeds: one table from the three arenas of ``launch/system_message_study.sh``.

    python -m safe_rlhf.analysis.system_study runs/system-study          # reads seed-*/arena_*/summary.json

Per policy and seed: on unseen system messages (``arena_system_eval``) the adherence and the helpfulness under the
stated preferences; with no system message (``arena_eval_prompts``) the plain helpfulness and harm rate; under
authority claims on the same prompts (``arena_system_eval_authority``) the harm rate and its rise over the plain one.
Writes ``summary.json`` and ``report.md`` into the study folder and prints the report.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

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


def study_summary(root: Path) -> dict[str, Any]:
    """``{"seeds": [...], "per_seed": {seed: rows}, "mean": {policy: {column: mean}}, "std": ...}``."""
    per_seed = {
        path.name.removeprefix("seed-"): seed_rows(path)
        for path in sorted(root.glob("seed-*"), key=lambda p: p.name)
        if path.is_dir()
    }
    policies = list(dict.fromkeys(p for rows in per_seed.values() for p in rows))
    columns = [c for c, _, _ in COLUMNS] + ["authority_minus_plain_harm"]
    mean: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for policy in policies:
        for column in columns:
            values = [rows[policy][column] for rows in per_seed.values() if column in rows.get(policy, {})]
            if values:
                mean.setdefault(policy, {})[column] = statistics.fmean(values)
                spread.setdefault(policy, {})[column] = statistics.stdev(values) if len(values) > 1 else math.nan
    return {"seeds": list(per_seed), "per_seed": per_seed, "mean": mean, "std": spread}


def report(summary: dict[str, Any]) -> str:
    """Markdown: one row per policy, mean +/- std over seeds, then the per-seed values."""
    columns = [c for c, _, _ in COLUMNS] + ["authority_minus_plain_harm"]
    lines = [f"# System-message study (seeds {', '.join(summary['seeds'])})", "",
             "| policy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]  # fmt: skip
    for policy, values in summary["mean"].items():
        cells = []
        for column in columns:
            if column in values:
                std = summary["std"][policy][column]
                cells.append(f"{values[column]:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}"))
            else:
                cells.append("")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed:", ""]
    for seed, rows in summary["per_seed"].items():
        for policy, values in rows.items():
            text = ", ".join(f"{column} {values[column]:.3f}" for column in columns if column in values)
            lines.append(f"- seed {seed}, {policy}: {text}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m safe_rlhf.analysis.system_study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", type=Path, help="the study folder (holds seed-*/arena_*/summary.json)")
    args = parser.parse_args(argv)
    if not any(args.root.glob("seed-*/arena_*/summary.json")):
        print(f"error: no seed-*/arena_*/summary.json under {args.root}", file=sys.stderr)
        raise SystemExit(2)
    summary = study_summary(args.root)
    (args.root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = report(summary)
    (args.root / "report.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

"""A Markdown report (``report.md``) in a run directory: sections of text, tables and images.

Images are linked by paths relative to the run directory (``![x](plots/x.png)``), so the report renders the same
in any Markdown viewer and keeps working when the run directory is moved or copied.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ReportSection:
    """One ``##`` section: a paragraph, then a table, then images."""

    title: str
    text: str = ""  # Markdown, written as is
    table: Sequence[Mapping[str, Any]] | None = None  # rows; columns are the keys of the first row
    images: Sequence[str | Path] = field(default_factory=list)  # absolute, or relative to the run directory


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a Markdown table; columns = keys of the first row (missing cells empty), floats to 3 decimals."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _image_link(image: str | Path, run_dir: Path) -> str:
    path = Path(image)
    relative = Path(os.path.relpath(path, run_dir)) if path.is_absolute() else path
    target = relative.as_posix()
    if any(ch in target for ch in " ()"):
        target = f"<{target}>"  # CommonMark: a link destination with spaces or parentheses goes in <...>
    return f"![{path.stem}]({target})"


def write_report(run_dir: str | Path, title: str, sections: Sequence[ReportSection]) -> Path:
    """Write ``run_dir/report.md``: ``# title``, then per section ``## title``, its text, table and images.

    Image paths are written relative to ``run_dir``: an absolute path is made relative to it, a relative path is
    taken as already relative to it.
    """
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        if section.text:
            parts.append(section.text.strip())
        if section.table:
            parts.append(markdown_table(section.table))
        parts += [_image_link(image, run_dir) for image in section.images]
    path = run_dir / "report.md"
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def _lookup(summary: Mapping[str, Any], key: str) -> Any:
    """``summary[key]``, or for a dotted key like ``harm_rate_by_severity.3`` the nested value; None when missing."""
    if key in summary:
        return summary[key]
    value: Any = summary
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def summary_table(policy_summaries: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per policy: ``{"policy": name, key: value, ...}``; dotted keys reach into nested dicts
    (``"harm_rate_by_severity.3"``); a missing value is None (an empty cell)."""
    return [
        {"policy": policy, **{key: _lookup(summary, key) for key in keys}}
        for policy, summary in policy_summaries.items()
    ]

"""safe_rlhf.analysis.plots and .report: PNGs written (non-empty, PNG magic) and a report that links them relatively."""

import json
import re

import pytest

from safe_rlhf.analysis.arena import PolicyResponse, policy_summary
from safe_rlhf.analysis.plots import (
    plot_harm_by_severity,
    plot_length_hist,
    plot_reward_cost_scatter,
    plot_training_curves,
)
from safe_rlhf.analysis.report import ReportSection, markdown_table, summary_table, write_report
from tests.unit.test_analysis_arena import arena_records

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


def metric_rows():
    return [
        {"step": 1, "train/reward": 0.1, "train/cost": 1.0, "train/lambda": 1.0, "train/kl": 0.0},
        {"step": 2, "train/reward": 0.4, "train/cost": 0.5, "train/lambda": 1.2},  # no kl logged this step
        {"step": 3, "train/reward": 0.9, "train/cost": -0.2, "train/lambda": 1.1, "train/kl": float("nan")},
        {"step": 4, "eval/note": "text", "train/reward": 1.2, "train/cost": -0.4, "train/lambda": 0.9},
    ]


def test_training_curves_from_jsonl_with_missing_keys(tmp_path):
    metrics_path = tmp_path / "metrics.jsonl"
    metrics_path.write_text("".join(json.dumps(row) + "\n" for row in metric_rows()))
    out = plot_training_curves(
        metrics_path, tmp_path / "plots" / "curves.png", keys=["train/reward", "train/cost", "missing"], threshold=0.0
    )
    assert out == tmp_path / "plots" / "curves.png"
    assert_png(out)


def test_training_curves_default_keys_and_nothing_plottable(tmp_path):
    assert_png(plot_training_curves(metric_rows(), tmp_path / "all.png"))
    with pytest.raises(ValueError, match="no numeric values"):
        plot_training_curves(metric_rows(), tmp_path / "none.png", keys=["missing", "eval/note"])
    assert not (tmp_path / "none.png").exists()


def test_record_plots(tmp_path):
    records = arena_records()
    assert_png(plot_reward_cost_scatter(records, tmp_path / "scatter.png"))
    assert_png(plot_harm_by_severity(policy_summary(records), tmp_path / "severity.png"))
    assert_png(plot_length_hist(records, tmp_path / "lengths.png"))


def test_record_plots_raise_when_nothing_is_plottable(tmp_path):
    no_truth = policy_summary([PolicyResponse("p", 0, "q", "a", reward=1.0, cost=0.0, length=3)])
    with pytest.raises(ValueError, match="harm_rate_by_severity"):
        plot_harm_by_severity(no_truth, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_reward_cost_scatter([], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_length_hist([], tmp_path / "x.png")


def test_markdown_table_formatting():
    table = markdown_table([{"name": "a|b", "value": 1 / 3, "count": 2}, {"name": "c", "value": None}])
    assert table.splitlines() == [
        "| name | value | count |",
        "|---|---|---|",
        "| a\\|b | 0.333 | 2 |",
        "| c |  |  |",  # missing and None cells are empty
    ]
    assert markdown_table([]) == ""


def test_summary_table_reaches_into_nested_values():
    rows = summary_table(policy_summary(arena_records()), ["mean_reward", "harm_rate_by_severity.3", "absent"])
    assert rows == [
        {"policy": "sft", "mean_reward": 0.875, "harm_rate_by_severity.3": 0.25, "absent": None},
        {"policy": "ppo", "mean_reward": 1.625, "harm_rate_by_severity.3": 0.0, "absent": None},
    ]


def test_report_with_tables_and_relative_images(tmp_path):
    run_dir = tmp_path / "run"
    records = arena_records()
    summaries = policy_summary(records)
    scatter = plot_reward_cost_scatter(records, run_dir / "plots" / "reward_cost.png")  # absolute path
    plot_length_hist(records, run_dir / "plots" / "lengths.png")
    sections = [
        ReportSection(
            "Policies",
            text="Mean scores and harm rates.",
            table=summary_table(summaries, ["mean_reward", "harmful_rate", "true_harm_rate"]),
            images=[scatter, "plots/lengths.png"],  # absolute, and already relative to run_dir
        ),
        ReportSection("Notes", text="Nothing else."),
    ]
    path = write_report(run_dir, "Arena", sections)
    assert path == run_dir / "report.md"
    text = path.read_text()
    assert text.startswith("# Arena\n")
    assert "## Policies" in text and "## Notes" in text
    assert "| policy | mean_reward | harmful_rate | true_harm_rate |" in text
    assert "| sft | 0.875 | 0.500 | 0.500 |" in text
    assert "| ppo | 1.625 | 0.500 | 0.500 |" in text
    links = re.findall(r"!\[([^\]]*)\]\(([^)]*)\)", text)
    assert links == [("reward_cost", "plots/reward_cost.png"), ("lengths", "plots/lengths.png")]
    for _, target in links:
        assert_png(run_dir / target)
    assert str(tmp_path) not in text  # nothing absolute


def test_report_links_images_outside_the_run_dir_relatively(tmp_path):
    image = plot_length_hist(arena_records(), tmp_path / "shared plots" / "lengths.png")
    text = write_report(tmp_path / "run", "T", [ReportSection("S", images=[image])]).read_text()
    # a destination with a space goes in <...>
    assert "![lengths](<../shared plots/lengths.png>)" in text

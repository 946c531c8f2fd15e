"""``python -m safe_rlhf.data describe``: text and --json reports, exit status 2 with one stderr line on bad data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safe_rlhf.data.describe import describe, main

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
REPO = Path(__file__).resolve().parents[2]


def test_text_report_for_preferences(capsys):
    assert main(["describe", f"pku-safe-rlhf:{FIXTURES / 'pku_safe_rlhf.jsonl'}"]) == 0
    out = capsys.readouterr().out
    assert "kind: preference   split: train" in out
    assert "records read: 4   kept: 4   skipped: 0" in out
    assert "better_id: 0: 2, 1: 2" in out
    assert "safer_id: 0: 4" in out
    assert "is_safe: safe: 4, unsafe: 4, unknown: 0" in out
    assert "severity: 0: 4, 1: 2, 2: 2" in out
    assert "Economic Crime: 2" in out
    assert "response_length: words min" in out
    assert "example (default template):" in out
    assert "BEGINNING OF CONVERSATION: USER: How do I bake bread at home? ASSISTANT:" in out


def test_json_report_with_skips(capsys):
    spec = f"pku-safe-rlhf:{FIXTURES / 'malformed' / 'mixed.jsonl'}"
    assert main(["describe", spec, "--on-error", "skip", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"read", "kept", "skipped", "stats"} <= set(report)
    assert (report["read"], report["kept"]) == (9, 2)
    assert report["skipped"]["invalid_json"] == 2 and sum(report["skipped"].values()) == 7
    assert report["stats"]["pairs"] == {"both_safe": 1, "both_unsafe": 1}
    assert report["sources"][0]["valid"] == 2


def test_attribute_means_and_prompt_meta():
    report = describe(f"helpsteer:{FIXTURES / 'helpsteer.jsonl'}")
    assert report["kind"] == "attribute"
    assert report["stats"]["attributes"]["helpfulness"]["mean"] == 2.0
    assert report["stats"]["attributes"]["coherence"] == {"count": 2, "mean": 3.5, "min": 3.0, "max": 4.0}
    prompts = describe(f"prompts:{FIXTURES / 'prompts.jsonl'}")
    assert prompts["stats"]["meta"]["risky"] == {"false": 1, "true": 1}
    sft = describe(f"sft:{FIXTURES / 'sft.jsonl'}", kind="sft")
    assert sft["stats"]["with_system_message"] == 1
    assert sft["stats"]["response_length"]["words"]["max"] == 5
    assert sft["example"] == "BEGINNING OF CONVERSATION: USER: What colour is the sky? ASSISTANT: Blue, on a clear day."


def test_data_error_exits_2_with_one_line(capsys):
    path = FIXTURES / "malformed" / "out_of_range.jsonl"
    assert main(["describe", f"pku-safe-rlhf:{path}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{path}:3: field 'better_response_id': expected 0 or 1, got 2\n"
    assert main(["describe", "spa-vl:x.jsonl", "--kind", "attribute"]) == 2
    assert "it supports: preference, sft, prompt" in capsys.readouterr().err


def test_module_entry_point_subprocess():
    bad = FIXTURES / "malformed" / "invalid_utf8.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "safe_rlhf.data", "describe", f"pku-safe-rlhf:{bad}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"{bad}:3: line is not valid UTF-8 (byte 15: b'\\xe9')"]
    assert "Traceback" not in run.stderr


def test_list_readers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "beavertails-v" in out and "toyworld" in out

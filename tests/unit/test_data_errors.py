"""Bad input: one-line DataErrors naming file, row and field by default; counted skips with on_error='skip'."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from safe_rlhf.data import DataError, load_samples
from safe_rlhf.data.errors import RecordError

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
MALFORMED = FIXTURES / "malformed"

# file -> (reason, the message after "path:3: "); the bad record is line 3 of each file, between good ones
CASES = {
    "missing_field.jsonl": ("missing_field", "field 'response_1': required field is missing"),
    "wrong_type.jsonl": ("wrong_type", "field 'better_response_id': expected 0 or 1, got str '1'"),
    "out_of_range.jsonl": ("out_of_range", "field 'better_response_id': expected 0 or 1, got 2"),
    "severity_out_of_range.jsonl": (
        "out_of_range",
        "field 'response_1_severity_level': expected an integer 0-3, got 7",
    ),
    "empty_response.jsonl": ("empty_response", "field 'response_0': is only whitespace"),
    "contradictory_labels.jsonl": (
        "contradictory_labels",
        "field 'safer_response_id': names response 1 as safer, but it is marked unsafe while response 0 is marked safe",
    ),
    "not_an_object.jsonl": ("invalid_json", "expected a JSON object, got list"),
    "invalid_json.jsonl": ("invalid_json", "invalid JSON: Expecting value (column 1)"),
    "invalid_utf8.jsonl": ("invalid_utf8", "line is not valid UTF-8 (byte 15: b'\\xe9')"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_first_bad_record_raises_one_line_error(name):
    reason, message = CASES[name]
    path = MALFORMED / name
    with pytest.raises(DataError) as caught:
        load_samples(f"pku-safe-rlhf:{path}", "preference")
    error = caught.value
    assert str(error) == f"{path}:3: {message}"
    assert "\n" not in str(error)
    assert isinstance(error, ValueError)
    assert (error.path, error.row, error.reason) == (str(path), 3, reason)


@pytest.mark.parametrize("name", sorted(CASES))
def test_skip_counts_the_bad_record(name):
    reason, _ = CASES[name]
    result = load_samples(f"pku-safe-rlhf:{MALFORMED / name}", "preference", on_error="skip")
    assert result.stats.read == 4
    assert result.stats.kept == 3
    assert result.stats.skipped == {reason: 1}
    assert [s.origin.rsplit(":", 1)[1] for s in result.samples] == ["1", "2", "4"]


def test_skip_counts_each_reason_in_a_mixed_file():
    result = load_samples(f"pku-safe-rlhf:{MALFORMED / 'mixed.jsonl'}", "preference", on_error="skip")
    assert result.stats.read == 9
    # the legal both-unsafe record (line 9) is kept with the good one (line 1)
    assert [s.origin.rsplit(":", 1)[1] for s in result.samples] == ["1", "9"]
    assert result.stats.skipped == {
        "missing_field": 1,
        "wrong_type": 1,
        "out_of_range": 1,
        "empty_response": 1,
        "contradictory_labels": 1,
        "invalid_json": 2,  # a truncated line and a JSON array line
    }
    (source,) = result.stats.sources
    assert (source.read, source.valid, source.kept) == (9, 2, 2)
    assert source.skipped == result.stats.skipped


def test_unreadable_json_list_is_a_whole_file_error_even_when_skipping():
    path = MALFORMED / "truncated_list.json"
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError) as caught:
            load_samples(f"pku-safe-rlhf-10k:{path}", "preference", on_error=on_error)
        assert str(caught.value).startswith(f"{path}:")
        assert "the whole JSON list is unreadable" in str(caught.value)


def test_bad_yes_no_string():
    path = MALFORMED / "beavertails_v_bad_yes_no.jsonl"
    with pytest.raises(DataError) as caught:
        load_samples(f"beavertails-v:{path}", "preference")
    assert str(caught.value) == f"{path}:1: field 'is_response_1_safe': expected 'yes' or 'no', got 'maybe'"


def test_missing_file_and_bad_arguments():
    with pytest.raises(DataError, match="no such file or directory"):
        load_samples("sft:/nonexistent/file.jsonl", "sft")
    with pytest.raises(DataError, match="unknown kind 'rewards'"):
        load_samples(f"sft:{FIXTURES / 'sft.jsonl'}", "rewards")
    with pytest.raises(DataError, match="on_error must be 'raise' or 'skip'"):
        load_samples(f"sft:{FIXTURES / 'sft.jsonl'}", "sft", on_error="ignore")
    with pytest.raises(DataError, match="unknown dataset reader 'pku'; known: align-anything-ti2t, alpaca"):
        load_samples("pku:/data", "preference")


def test_values_with_newlines_stay_on_one_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"prompt": "p", "response": ["multi\\nline"]}\n')
    with pytest.raises(DataError) as caught:
        load_samples(f"sft:{tmp_path / 'x.jsonl'}", "sft")
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path / 'x.jsonl'}:1: field 'response': expected a string, got list")


def test_null_required_field_and_integral_floats(tmp_path):
    good = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 1.0}
    import json

    (tmp_path / "x.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good | {"better_response_id": None}) + "\n")
    with pytest.raises(DataError, match=r"x.jsonl:2: field 'better_response_id': is null$"):
        load_samples(f"pku-safe-rlhf:{tmp_path / 'x.jsonl'}", "preference")
    result = load_samples(f"pku-safe-rlhf:{tmp_path / 'x.jsonl'}", "preference", on_error="skip")
    assert result.samples[0].better_id == 1  # 1.0 from a pandas export is accepted as 1
    assert result.stats.skipped == {"missing_field": 1}


def test_data_error_pickles_and_renders_without_location():
    error = DataError(
        "expected 0 or 1, got 2", reason="out_of_range", path="a.jsonl", row=17, field="better_response_id"
    )
    assert str(error) == "a.jsonl:17: field 'better_response_id': expected 0 or 1, got 2"
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error) and clone.row == 17 and clone.reason == "out_of_range"
    assert str(DataError("bad spec", reason="bad_spec")) == "bad spec"
    assert str(DataError("whole file", reason="x", path="f.json")) == "f.json: whole file"
    assert RecordError("wrong_type", "f", "d").field == "f"


def test_empty_prompt_and_wrong_bool_type(tmp_path):
    (tmp_path / "x.jsonl").write_text(
        '{"prompt": "", "response": "r"}\n'
        '{"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0, "is_response_0_safe": "yes"}\n'
    )
    with pytest.raises(DataError, match=r"x.jsonl:1: field 'prompt': is empty$") as caught:
        load_samples(f"sft:{tmp_path / 'x.jsonl'}", "sft")
    assert caught.value.reason == "empty_prompt"
    result = load_samples(f"pku-safe-rlhf:{tmp_path / 'x.jsonl'}", "preference", on_error="skip")
    assert result.stats.skipped == {"empty_prompt": 1, "wrong_type": 1}
    bool_line = (tmp_path / "x.jsonl").read_text().splitlines()[1]
    (tmp_path / "y.jsonl").write_text(bool_line + "\n")
    expected = r"y.jsonl:1: field 'is_response_0_safe': expected true or false, got str 'yes'"
    with pytest.raises(DataError, match=expected):
        load_samples(f"pku-safe-rlhf:{tmp_path / 'y.jsonl'}", "preference")

"""The image-swap control's summary, on hand-made records."""

from __future__ import annotations

import pytest

from safe_rlhf.analysis import PolicyResponse
from safe_rlhf.analysis.swap_control import swap_control_summary

pytestmark = pytest.mark.unit


def answer(policy, prompt_id, response, risky, severity):
    return PolicyResponse(policy, prompt_id, "how do i do this", response, 0.0, 0.0, 3, true_severity=severity,
                          risky=risky)  # fmt: skip


def test_a_policy_that_reads_the_picture_changes_its_answers_and_its_harm_follows_the_picture():
    original = [
        answer("reads", 0, "sorry i cannot", True, 0),
        answer("reads", 1, "flour yeast", False, 0),
        answer("reads", 2, "sure powder", True, 3),
        answer("blind", 0, "sure scan", True, 1),
        answer("blind", 1, "sure scan", False, 1),
    ]
    swapped = [  # prompt 0 now shows a benign picture, 1 a risky one, 2 another risky one
        answer("reads", 0, "restart update", False, 0),
        answer("reads", 1, "sure shove", True, 2),
        answer("reads", 2, "sure powder", True, 3),
        answer("blind", 0, "sure scan", False, 1),
        answer("blind", 1, "sure scan", True, 1),
        answer("blind", 9, "unpaired", True, 1),  # no original: left out
    ]
    summary = swap_control_summary(original, swapped)
    reads, blind = summary["reads"], summary["blind"]
    assert reads["n"] == 3 and reads["answers_changed"] == pytest.approx(2 / 3)
    assert reads["harm_rate_risky"] == pytest.approx(1 / 2) and reads["harm_rate_benign"] == 0.0
    assert reads["swapped_harm_rate_risky"] == 1.0 and reads["swapped_harm_rate_benign"] == 0.0
    assert blind["n"] == 2 and blind["answers_changed"] == 0.0
    assert blind["swapped_harm_rate_benign"] == 1.0  # the same harm under a benign picture: it ignores the image


def shown(policy, prompt_id, response, image_class):
    return PolicyResponse(policy, prompt_id, "how do i do this", response, 0.0, 0.0, 2, image_class=image_class)


def test_answers_that_follow_the_new_picture_score_higher_on_it_than_on_the_picture_they_replaced():
    # The world's table: an answer word of the pictured request +1, any other content word -1.
    original = [
        shown("reads", 0, "flour yeast", "cooking-benign"),
        shown("reads", 1, "restart update", "computer-benign"),
        shown("stale", 0, "flour yeast", "cooking-benign"),
        shown("stale", 1, "restart update", "computer-benign"),
    ]
    swapped = [
        shown("reads", 0, "leash crate", "pets-benign"),
        shown("reads", 1, "flour knead", "cooking-benign"),
        shown("stale", 0, "flour yeast", "pets-benign"),
        shown("stale", 1, "restart update", "cooking-benign"),
    ]
    summary = swap_control_summary(original, swapped)
    # reads: its answers score (2 + 2) / 2 on the pictures shown, (-2 - 2) / 2 on the ones they replaced
    assert summary["reads"]["swapped_help_shown"] == 2.0 and summary["reads"]["swapped_help_original"] == -2.0
    assert summary["reads"]["follows_picture"] == 4.0
    # stale: it keeps answering for the picture that was replaced, so its answers fit that one and not the new one
    assert summary["stale"]["follows_picture"] == -4.0
    # records without a picture class (the text world) have no such numbers
    assert "follows_picture" not in swap_control_summary([shown("t", 0, "x", None)], [shown("t", 0, "y", None)])["t"]


def test_the_image_class_survives_the_records_files(tmp_path):
    from safe_rlhf.analysis import read_records, write_csv, write_records

    records = [shown("p", 0, "flour yeast", "cooking-benign"), shown("p", 1, "hi", None)]
    assert read_records(write_records(records, tmp_path / "r.jsonl")) == records
    assert read_records(write_csv(records, tmp_path / "r.csv")) == records

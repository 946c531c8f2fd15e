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

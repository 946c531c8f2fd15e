"""labelled_responses: preference pairs split into safety-labelled single responses (moderation-classifier data)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from safe_rlhf.data import (
    AttributeSample,
    PreferenceSample,
    conversation,
    labelled_responses,
    load_samples,
)
from safe_rlhf.toyworld import HARM_CATEGORIES, generate, harm

pytestmark = pytest.mark.unit

WIFI = "How can I get into my neighbour's wifi?"
REFUSAL = "I cannot help with that."
COMPLIANCE = "Try the default router passwords."


def no_harm() -> dict[str, float]:
    """``harm:<name>`` 0.0 for all 19 PKU-SafeRLHF categories."""
    return {f"harm:{name}": 0.0 for name in HARM_CATEGORIES}


def pair(
    prompt: str = WIFI,
    responses: tuple[str, str] = (REFUSAL, COMPLIANCE),
    is_safe: tuple[bool | None, bool | None] = (True, False),
    severity: tuple[int | None, int | None] = (0, 2),
    harm_categories: tuple[frozenset[str], frozenset[str]] = (
        frozenset(),
        frozenset({"Cybercrime", "Privacy Violation"}),
    ),
    system: str | None = None,
    origin: str = "",
) -> PreferenceSample:
    return PreferenceSample(
        messages=conversation(prompt, system=system),
        responses=responses,
        better_id=1,  # labelled_responses reads neither better_id nor safer_id
        is_safe=is_safe,
        severity=severity,
        harm_categories=harm_categories,
        origin=origin,
    )


def test_a_fully_labelled_pair_gives_two_responses_with_every_category():
    samples, counts = labelled_responses([pair(origin="pku.jsonl:7")])
    assert counts == Counter()
    assert samples == [
        AttributeSample(conversation(WIFI), REFUSAL, {"is_safe": 1.0, "severity_level": 0.0, **no_harm()}),
        AttributeSample(
            conversation(WIFI),
            COMPLIANCE,
            {
                "is_safe": 0.0,
                "severity_level": 2.0,
                **no_harm(),
                "harm:Cybercrime": 1.0,
                "harm:Privacy Violation": 1.0,
            },
        ),
    ]
    # 1 + 1 + 19 attributes each, category flags in the dataset's order; the origin names the response.
    assert [len(sample.attributes) for sample in samples] == [21, 21]
    assert list(samples[1].attributes)[2:] == [f"harm:{name}" for name in HARM_CATEGORIES]
    assert [sample.origin for sample in samples] == ["pku.jsonl:7#response_0", "pku.jsonl:7#response_1"]


def test_without_severity_only_is_safe_and_no_category_flags():
    # Legacy PKU-SafeRLHF-30K: is_safe only. Empty harm_categories says nothing there, so no harm:<name> is made up.
    samples, counts = labelled_responses([pair(severity=(None, None), harm_categories=(frozenset(), frozenset()))])
    assert [sample.attributes for sample in samples] == [{"is_safe": 1.0}, {"is_safe": 0.0}]
    assert counts == Counter()


def test_is_safe_is_derived_from_severity_when_only_severity_is_known():
    samples, counts = labelled_responses([pair(is_safe=(None, None), severity=(0, 3))])
    assert [sample.attributes["is_safe"] for sample in samples] == [1.0, 0.0]
    assert [sample.attributes["severity_level"] for sample in samples] == [0.0, 3.0]
    assert counts == Counter()


def test_responses_without_safety_labels_are_skipped_and_counted():
    unlabelled = pair(is_safe=(None, None), severity=(None, None), harm_categories=(frozenset(), frozenset()))
    half = pair(
        prompt="Tell me a joke.",
        responses=("A pun.", "Cats are dumb."),
        is_safe=(None, False),
        severity=(None, 1),
        harm_categories=(frozenset(), frozenset({"Insulting Behavior"})),
    )
    samples, counts = labelled_responses([unlabelled, half])
    assert [(sample.prompt, sample.response) for sample in samples] == [("Tell me a joke.", "Cats are dumb.")]
    assert samples[0].attributes == {
        "is_safe": 0.0,
        "severity_level": 1.0,
        **no_harm(),
        "harm:Insulting Behavior": 1.0,
    }
    assert counts == Counter({"no_safety_labels": 3})


def test_duplicates_across_pairs_are_kept_once_and_counted():
    first = pair(origin="a:1")
    # The same refusal to the same prompt again, with another second response.
    again = pair(responses=(REFUSAL, "Guess the password."), origin="a:2")
    # The same compliance labelled differently: a duplicate whose labels conflict (the first labels are kept).
    relabelled = pair(
        responses=(COMPLIANCE, "Ask the owner."),
        is_safe=(False, True),
        severity=(3, 0),
        harm_categories=(frozenset({"Cybercrime"}), frozenset()),
        origin="a:3",
    )
    # The same texts in another conversation (a system message) are not duplicates.
    other_conversation = pair(system="You are terse.", origin="a:4")
    samples, counts = labelled_responses([first, again, relabelled, other_conversation])
    assert [sample.origin for sample in samples] == [
        "a:1#response_0",
        "a:1#response_1",
        "a:2#response_1",
        "a:3#response_1",
        "a:4#response_0",
        "a:4#response_1",
    ]
    assert samples[1].attributes["severity_level"] == 2.0  # the first copy's labels, not the relabelled 3
    assert counts == Counter({"duplicate": 2, "duplicate_label_conflict": 1})
    # A pair whose two responses are the same text keeps one.
    no_categories = (frozenset[str](), frozenset[str]())
    same = pair(responses=(REFUSAL, REFUSAL), is_safe=(True, True), severity=(0, 0), harm_categories=no_categories)
    samples, counts = labelled_responses([same])
    assert len(samples) == 1 and counts == Counter({"duplicate": 1})


def test_category_names_set_the_zero_flags_and_unknown_names_are_kept():
    samples, counts = labelled_responses([pair()], category_names=("Cybercrime", "Violence"))
    assert [sample.attributes for sample in samples] == [
        {"is_safe": 1.0, "severity_level": 0.0, "harm:Cybercrime": 0.0, "harm:Violence": 0.0},
        {
            "is_safe": 0.0,
            "severity_level": 2.0,
            "harm:Cybercrime": 1.0,
            "harm:Violence": 0.0,
            "harm:Privacy Violation": 1.0,  # not in category_names, flagged: kept, and counted
        },
    ]
    assert counts == Counter({"unknown_category": 1})


def test_empty_input_and_any_iterable():
    assert labelled_responses([]) == ([], Counter())
    samples, _ = labelled_responses(sample for sample in [pair()])
    assert len(samples) == 2


def test_toy_world_pairs_give_the_attributes_the_qa_reader_gives(tmp_path: Path):
    # The same attribute names and values as toyworld:qa lines (the judge verdict read by the pku-safe-rlhf-qa reader).
    sizes = {"num_sft": 0, "num_preference_test": 0, "num_prompts": 0, "num_eval_prompts": 0, "num_qa_test": 0}
    paths = generate(tmp_path, seed=0, num_preference=200, num_qa=50, **sizes)
    pairs = load_samples(f"pku-safe-rlhf:{paths['preference']}", "preference").samples
    samples, counts = labelled_responses(pairs)
    assert len(samples) + counts["duplicate"] == 400 and set(counts) <= {"duplicate"}
    for sample in samples:
        verdict = harm(sample.prompt, sample.response)
        assert sample.attributes == {
            "is_safe": float(verdict.is_safe),
            "severity_level": float(verdict.severity),
            **{f"harm:{name}": float(flag) for name, flag in verdict.category_flags().items()},
        }
    qa = load_samples(f"pku-safe-rlhf-qa:{paths['qa']}", "attribute").samples
    assert {tuple(sample.attributes) for sample in qa} == {tuple(sample.attributes) for sample in samples}

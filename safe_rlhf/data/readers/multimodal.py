"""Image-question preference datasets: SPA-VL, VLFeedback (Silkie) and align-anything's text-image-to-text format.

Every image is resolved and checked by :mod:`safe_rlhf.data.images` (a path relative to the data file, the hub's
``{bytes, path}`` struct, bytes); a missing or undecodable one is a ``missing_image`` / ``bad_image`` error naming
the record, or a counted skip with ``on_error="skip"``. BeaverTails-V is in ``beavertails.py``.

* ``spa-vl``: ``image, question, chosen, rejected`` (+ ``image_name``; the validation config adds ``class1-3``).
  ``chosen`` is the preferred answer of an annotation that put harmlessness first, so it is both the better and the
  safer one (``better_id = safer_id = 0``); whether either is safe is not labelled. Kinds: preference, sft (the
  chosen answer), prompt (``image_name`` and ``class1-3`` in ``meta``; the test configs have only prompts).
* ``vlfeedback``: ``id, prompt, img_path, models, completions[{model, response, annotations{Helpfulness,
  Ethical Considerations, Visual Faithfulness: {Rating "1"-"5", Rationale}}}]`` (ratings are strings; one that is
  not a number, e.g. "N/A", leaves that aspect out). Preference: the completion with the highest mean rating against
  the one with the lowest, as Silkie pairs them (a record whose means all tie is a ``no_preference`` error); the
  safer of the two by the Ethical Considerations rating when they differ, and a completion rated 1-2 on it counts as
  unsafe, 4-5 safe. Kinds: preference, sft (the best completion), attribute (one sample per record: the best
  completion with each aspect's rating), prompt. ``completions`` may also come as the hub's dict of lists.
* ``align-anything-ti2t``: align-anything's text-image-to-text preference records: ``question, image, response_1,
  response_2, overall_response (1/2)`` and, when present, ``s_response`` (1/2: the safer one) and ``safety_rate_1/2``.
  1-based ids become 0-based. Kinds: preference, prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_rlhf.data.errors import MISSING_FIELD, NO_PREFERENCE, OUT_OF_RANGE, WRONG_TYPE, RecordError, describe_value
from safe_rlhf.data.images import image_from_field
from safe_rlhf.data.readers import fields
from safe_rlhf.data.readers.registry import Reader, register_reader
from safe_rlhf.data.types import AttributeSample, PreferenceSample, PromptSample, SFTSample, conversation

VLFEEDBACK_ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")


# ---------------------------------------------------------------------------------------------------------- SPA-VL


def parse_spa_vl_preference(record: Mapping[str, Any], base_dir: Path | None = None) -> PreferenceSample:
    """SPA-VL quadruple -> PreferenceSample: the chosen answer is both more helpful and safer (id 0)."""
    question = fields.prompt_text(record, "question")
    responses = (fields.response_text(record, "chosen"), fields.response_text(record, "rejected"))
    image = image_from_field(record, "image", base_dir)
    return PreferenceSample(
        messages=conversation(question), responses=responses, better_id=0, safer_id=0, images=(image,)
    )


def parse_spa_vl_sft(record: Mapping[str, Any], base_dir: Path | None = None) -> SFTSample:
    """SPA-VL quadruple -> SFTSample on the chosen answer."""
    question = fields.prompt_text(record, "question")
    response = fields.response_text(record, "chosen")
    return SFTSample(
        messages=conversation(question), response=response, images=(image_from_field(record, "image", base_dir),)
    )


def parse_spa_vl_prompt(record: Mapping[str, Any], base_dir: Path | None = None) -> PromptSample:
    """SPA-VL question and image -> PromptSample (``image_name``, ``class1-3`` in ``meta``)."""
    question = fields.prompt_text(record, "question")
    meta = {key: record[key] for key in ("image_name", "class1", "class2", "class3") if record.get(key) is not None}
    return PromptSample(
        messages=conversation(question), meta=meta, images=(image_from_field(record, "image", base_dir),)
    )


# ------------------------------------------------------------------------------------------------------ VLFeedback


def _completions(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    value = fields.require(record, "completions")
    if isinstance(value, Mapping):  # the hub's Sequence(dict) form: a dict of equal-length lists
        keys = list(value)
        if not keys or not all(isinstance(value[k], list) for k in keys):
            raise RecordError(WRONG_TYPE, "completions", "expected a list of completions or a dict of lists")
        value = [{k: value[k][i] for k in keys} for i in range(len(value[keys[0]]))]
    if not isinstance(value, list) or not all(isinstance(c, Mapping) for c in value):
        raise RecordError(WRONG_TYPE, "completions", f"expected a list of completions, got {describe_value(value)}")
    if not value:
        raise RecordError(MISSING_FIELD, "completions", "no completions")
    return value


def _ratings(completion: Mapping[str, Any], position: int) -> dict[str, float]:
    """Aspect -> rating (1-5) of one completion; a non-numeric rating ("N/A") leaves its aspect out."""
    where = f"completions[{position}].annotations"
    annotations = completion.get("annotations")
    if not isinstance(annotations, Mapping):
        raise RecordError(MISSING_FIELD, where, f"expected the aspect ratings, got {describe_value(annotations)}")
    ratings: dict[str, float] = {}
    for aspect in VLFEEDBACK_ASPECTS:
        entry = annotations.get(aspect)
        raw = entry.get("Rating") if isinstance(entry, Mapping) else None
        try:
            rating = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if not 1.0 <= rating <= 5.0:
            raise RecordError(OUT_OF_RANGE, f"{where}.{aspect}.Rating", f"expected 1-5, got {raw!r}")
        ratings[aspect] = rating
    return ratings


def _rated(record: Mapping[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(response, ratings) of every completion that has a response and at least one rating."""
    rated = []
    for position, completion in enumerate(_completions(record)):
        response = completion.get("response")
        if not isinstance(response, str) or not response.strip():
            continue
        ratings = _ratings(completion, position)
        if ratings:
            rated.append((response, ratings))
    if not rated:
        raise RecordError(MISSING_FIELD, "completions", "no completion has a response and a numeric rating")
    return rated


def _mean(ratings: Mapping[str, float]) -> float:
    return sum(ratings.values()) / len(ratings)


def _ethical_safety(ratings: Mapping[str, float]) -> bool | None:
    rating = ratings.get("Ethical Considerations")
    if rating is None or rating == 3.0:
        return None
    return rating >= 4.0


def parse_vlfeedback_preference(record: Mapping[str, Any], base_dir: Path | None = None) -> PreferenceSample:
    """VLFeedback record -> PreferenceSample: highest against lowest mean rating (Silkie's pairing)."""
    prompt = fields.prompt_text(record, "prompt")
    image = image_from_field(record, "img_path", base_dir)
    rated = _rated(record)
    best = max(range(len(rated)), key=lambda i: _mean(rated[i][1]))
    worst = min(range(len(rated)), key=lambda i: _mean(rated[i][1]))
    if _mean(rated[best][1]) == _mean(rated[worst][1]):
        raise RecordError(NO_PREFERENCE, "completions", "every completion has the same mean rating")
    pair = (rated[best], rated[worst])
    ethical = [ratings.get("Ethical Considerations") for _, ratings in pair]
    safer_id = None
    if None not in ethical and ethical[0] != ethical[1]:
        safer_id = 0 if ethical[0] > ethical[1] else 1  # type: ignore[operator]
    return PreferenceSample(
        messages=conversation(prompt),
        responses=(pair[0][0], pair[1][0]),
        better_id=0,
        safer_id=safer_id,
        is_safe=(_ethical_safety(pair[0][1]), _ethical_safety(pair[1][1])),
        images=(image,),
    )


def parse_vlfeedback_sft(record: Mapping[str, Any], base_dir: Path | None = None) -> SFTSample:
    """VLFeedback record -> SFTSample on the completion with the highest mean rating."""
    prompt = fields.prompt_text(record, "prompt")
    image = image_from_field(record, "img_path", base_dir)
    response, _ = max(_rated(record), key=lambda item: _mean(item[1]))
    return SFTSample(messages=conversation(prompt), response=response, images=(image,))


def parse_vlfeedback_attribute(record: Mapping[str, Any], base_dir: Path | None = None) -> AttributeSample:
    """VLFeedback record -> AttributeSample: the best completion and its rating per aspect (1-5)."""
    prompt = fields.prompt_text(record, "prompt")
    image = image_from_field(record, "img_path", base_dir)
    response, ratings = max(_rated(record), key=lambda item: _mean(item[1]))
    return AttributeSample(messages=conversation(prompt), response=response, attributes=dict(ratings), images=(image,))


def parse_vlfeedback_prompt(record: Mapping[str, Any], base_dir: Path | None = None) -> PromptSample:
    """VLFeedback prompt and image -> PromptSample (``id`` in ``meta``)."""
    prompt = fields.prompt_text(record, "prompt")
    meta = {"id": record["id"]} if record.get("id") is not None else {}
    return PromptSample(
        messages=conversation(prompt), meta=meta, images=(image_from_field(record, "img_path", base_dir),)
    )


# ------------------------------------------------------------------------------------ align-anything text-image-to-text


def parse_ti2t_preference(record: Mapping[str, Any], base_dir: Path | None = None) -> PreferenceSample:
    """align-anything text-image-to-text record -> PreferenceSample (1-based ``overall_response``, ``s_response``)."""
    question = fields.prompt_text(record, "question")
    responses = (fields.response_text(record, "response_1"), fields.response_text(record, "response_2"))
    better_id = fields.choice_id(record, "overall_response", (1, 2), numeric_strings=True) - 1
    safer = fields.optional_choice_id(record, "s_response", (1, 2), numeric_strings=True)
    image = image_from_field(record, "image", base_dir)
    return PreferenceSample(
        messages=conversation(question),
        responses=responses,
        better_id=better_id,
        safer_id=None if safer is None else safer - 1,
        images=(image,),
    )


def parse_ti2t_prompt(record: Mapping[str, Any], base_dir: Path | None = None) -> PromptSample:
    """align-anything text-image-to-text question and image -> PromptSample."""
    question = fields.prompt_text(record, "question")
    return PromptSample(messages=conversation(question), images=(image_from_field(record, "image", base_dir),))


register_reader(
    Reader(
        "spa-vl",
        "SPA-VL image-question quadruples {image, question, chosen, rejected}",
        {"preference": parse_spa_vl_preference, "sft": parse_spa_vl_sft, "prompt": parse_spa_vl_prompt},
        hub_id="sqrti/SPA-VL",
        takes_base_dir=True,
    )
)
register_reader(
    Reader(
        "vlfeedback",
        "VLFeedback (Silkie) {prompt, img_path, completions with 1-5 aspect ratings}",
        {
            "preference": parse_vlfeedback_preference,
            "sft": parse_vlfeedback_sft,
            "attribute": parse_vlfeedback_attribute,
            "prompt": parse_vlfeedback_prompt,
        },
        hub_id="MMInstruction/VLFeedback",
        takes_base_dir=True,
    )
)
register_reader(
    Reader(
        "align-anything-ti2t",
        "align-anything text-image-to-text preferences {question, image, response_1/2, overall_response 1/2}",
        {"preference": parse_ti2t_preference, "prompt": parse_ti2t_prompt},
        hub_id="PKU-Alignment/align-anything",
        takes_base_dir=True,
    )
)

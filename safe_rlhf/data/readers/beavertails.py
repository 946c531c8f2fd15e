"""BeaverTails (QA pairs with safety labels), BeaverTails-Evaluation (prompts) and BeaverTails-V (preferences).

* ``beavertails``: ``prompt, response, category ({14 keys: bool}), is_safe (bool)``. Kinds: sft (prompt + response,
  no safety filtering), attribute (``is_safe`` 1.0/0.0 and ``harm:<key>`` per category), prompt. Splits are named
  ``330k_train`` / ``330k_test`` / ``30k_train`` / ``30k_test`` on the hub; a local copy laid out as
  ``330k/train.jsonl`` is found with ``@330k_train``.
* ``beavertails-evaluation``: ``prompt, category, category_id`` -> prompt (category kept in ``meta``).
* ``beavertails-v``: ``question, image, response_1, response_2, more_helpful_response_id (1/2), safer_response_id
  (1/2), is_response_{1,2}_safe ('yes'/'no')``, with ``category`` and ``image_severity`` per question. The 1-based
  ids are converted to the 0-based ``better_id`` / ``safer_id``; the image (a path relative to the data file, or the
  hub's ``{bytes, path}``) is checked and kept in ``images`` (``safe_rlhf.data.images``); severity / harm categories
  of the responses are left unlabelled (the dataset rates harmlessness -3..3, not PKU's levels).
  Kinds: preference, prompt (the question and image; ``category`` and ``image_severity`` kept in ``meta``).
  The card's single-response configs (``question, image, category, image_severity, response, is_response_safe``)
  give sft and attribute (``is_safe`` 1.0/0.0, ``image_severity``) samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_rlhf.data.images import image_from_field
from safe_rlhf.data.readers import fields
from safe_rlhf.data.readers.registry import Reader, register_reader
from safe_rlhf.data.types import AttributeSample, PreferenceSample, PromptSample, SFTSample, conversation


def parse_sft(record: Mapping[str, Any]) -> SFTSample:
    """BeaverTails QA pair -> SFTSample."""
    return SFTSample(
        messages=conversation(fields.prompt_text(record, "prompt")),
        response=fields.response_text(record, "response"),
    )


def parse_attributes(record: Mapping[str, Any]) -> AttributeSample:
    """BeaverTails QA pair -> AttributeSample with ``is_safe`` and ``harm:<category>`` flags."""
    sft = parse_sft(record)
    attributes = {"is_safe": float(fields.required_bool(record, "is_safe"))}
    for name, flag in (fields.optional_flag_dict(record, "category") or {}).items():
        attributes[f"harm:{name}"] = float(flag)
    return AttributeSample(messages=sft.messages, response=sft.response, attributes=attributes)


def parse_prompt(record: Mapping[str, Any]) -> PromptSample:
    """BeaverTails prompt -> PromptSample."""
    return PromptSample(messages=conversation(fields.prompt_text(record, "prompt")))


def parse_evaluation_prompt(record: Mapping[str, Any]) -> PromptSample:
    """BeaverTails-Evaluation record -> PromptSample with ``category`` / ``category_id`` in ``meta``."""
    prompt = fields.prompt_text(record, "prompt")
    meta: dict[str, Any] = {}
    category = fields.optional_text(record, "category")
    if category is not None:
        meta["category"] = category
    category_id = fields.optional_int_in_range(record, "category_id", 0, 10_000)
    if category_id is not None:
        meta["category_id"] = category_id
    return PromptSample(messages=conversation(prompt), meta=meta)


def _optional_yes_no(record: Mapping[str, Any], name: str) -> bool | None:
    return None if record.get(name) is None else fields.yes_no(record, name)


def parse_v_preference(record: Mapping[str, Any], base_dir: Path | None = None) -> PreferenceSample:
    """BeaverTails-V record -> PreferenceSample with its image; 1-based ids become 0-based, 'yes'/'no' booleans."""
    question = fields.prompt_text(record, "question")
    responses = (fields.response_text(record, "response_1"), fields.response_text(record, "response_2"))
    better_id = fields.choice_id(record, "more_helpful_response_id", (1, 2), numeric_strings=True) - 1
    safer_one_based = fields.optional_choice_id(record, "safer_response_id", (1, 2), numeric_strings=True)
    safer_id = None if safer_one_based is None else safer_one_based - 1
    is_safe = (_optional_yes_no(record, "is_response_1_safe"), _optional_yes_no(record, "is_response_2_safe"))
    fields.check_safer_consistent(safer_id, is_safe, "safer_response_id", id_base=1)
    image = image_from_field(record, "image", base_dir)
    return PreferenceSample(
        messages=conversation(question),
        responses=responses,
        better_id=better_id,
        safer_id=safer_id,
        is_safe=is_safe,
        images=(image,),
    )


def parse_v_prompt(record: Mapping[str, Any], base_dir: Path | None = None) -> PromptSample:
    """BeaverTails-V question and image -> PromptSample with ``category`` / ``image_severity`` in ``meta``."""
    question = fields.prompt_text(record, "question")
    meta = {key: record[key] for key in ("category", "image_severity") if record.get(key) is not None}
    image = image_from_field(record, "image", base_dir)
    return PromptSample(messages=conversation(question), meta=meta, images=(image,))


def parse_v_sft(record: Mapping[str, Any], base_dir: Path | None = None) -> SFTSample:
    """BeaverTails-V single-response record -> SFTSample (question and image, ``response``)."""
    question = fields.prompt_text(record, "question")
    response = fields.response_text(record, "response")
    return SFTSample(
        messages=conversation(question), response=response, images=(image_from_field(record, "image", base_dir),)
    )


def parse_v_attribute(record: Mapping[str, Any], base_dir: Path | None = None) -> AttributeSample:
    """BeaverTails-V single-response record -> AttributeSample: ``is_safe`` and, when given, ``image_severity`` and
    ``severity_level`` (PKU-SafeRLHF's 0-3, which the toy world's copy adds)."""
    sft = parse_v_sft(record, base_dir)
    attributes = {"is_safe": float(fields.yes_no(record, "is_response_safe"))}
    image_severity = fields.optional_int_in_range(record, "image_severity", 0, 100)
    if image_severity is not None:
        attributes["image_severity"] = float(image_severity)
    severity = fields.optional_int_in_range(record, "severity_level", 0, 3)  # PKU's levels, where a copy adds them
    if severity is not None:
        attributes["severity_level"] = float(severity)
    return AttributeSample(messages=sft.messages, response=sft.response, attributes=attributes, images=sft.images)


register_reader(
    Reader(
        "beavertails",
        "BeaverTails QA pairs with is_safe and 14 harm categories (sft, attribute, prompt)",
        {"sft": parse_sft, "attribute": parse_attributes, "prompt": parse_prompt},
        hub_id="PKU-Alignment/BeaverTails",
    )
)
register_reader(
    Reader(
        "beavertails-evaluation",
        "BeaverTails-Evaluation: 700 red-team prompts with category",
        {"prompt": parse_evaluation_prompt},
        hub_id="PKU-Alignment/BeaverTails-Evaluation",
    )
)
register_reader(
    Reader(
        "beavertails-v",
        "BeaverTails-V image-question preferences (1-based ids, 'yes'/'no' safety labels)",
        {
            "preference": parse_v_preference,
            "prompt": parse_v_prompt,
            "sft": parse_v_sft,
            "attribute": parse_v_attribute,
        },
        hub_id="PKU-Alignment/BeaverTails-V",
        takes_base_dir=True,
    )
)

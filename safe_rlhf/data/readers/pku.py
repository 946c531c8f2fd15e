"""PKU-SafeRLHF and its siblings (PKU-Alignment on the hub).

* ``pku-safe-rlhf`` (aliases ``pku-safe-rlhf-30k``, ``pku-safe-rlhf-10k``, ``pku-safe-rlhf-single-dimension``):
  preference records ``prompt, response_0, response_1, better_response_id`` (0-based) and, when present,
  ``safer_response_id`` (0-based), ``is_response_{0,1}_safe`` (bool), ``response_{0,1}_severity_level`` (0-3),
  ``response_{0,1}_harm_category`` ({category: bool}). The safety fields are optional (single-dimension and some
  legacy copies lack them) but must be well-typed when present. Per-model configs (``%alpaca-7b``) pick the
  ``data/Alpaca-7B/`` subdirectory of a local copy, or the hub config. Kinds: preference, prompt.
* ``pku-safe-rlhf-prompt``: ``prompt, prompt_source`` -> prompt.
* ``pku-safe-rlhf-qa``: ``prompt, response`` with per-response safety labels -> sft, attribute. Two label schemas
  are accepted: the hub's current ``severity_category`` (int 0-3) + ``safety_category`` (list of category indexes),
  and the ``is_safe`` / ``severity_level`` / ``harm_category`` form the dataset card describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safe_rlhf.data.errors import MISSING_FIELD, WRONG_TYPE, RecordError, describe_value
from safe_rlhf.data.readers import fields
from safe_rlhf.data.readers.registry import Reader, RecordParser, register_reader
from safe_rlhf.data.types import AttributeSample, PreferenceSample, PromptSample, SFTSample, conversation


def parse_preference(record: Mapping[str, Any]) -> PreferenceSample:
    """A PKU-SafeRLHF preference record -> PreferenceSample (ids are already 0-based)."""
    prompt = fields.prompt_text(record, "prompt")
    responses = (fields.response_text(record, "response_0"), fields.response_text(record, "response_1"))
    better_id = fields.choice_id(record, "better_response_id")
    safer_id = fields.optional_choice_id(record, "safer_response_id")
    is_safe = (fields.optional_bool(record, "is_response_0_safe"), fields.optional_bool(record, "is_response_1_safe"))
    severity = (
        fields.optional_int_in_range(record, "response_0_severity_level", 0, 3),
        fields.optional_int_in_range(record, "response_1_severity_level", 0, 3),
    )
    harm_categories = (
        fields.flagged(fields.optional_flag_dict(record, "response_0_harm_category")),
        fields.flagged(fields.optional_flag_dict(record, "response_1_harm_category")),
    )
    fields.check_safer_consistent(safer_id, is_safe, "safer_response_id")
    return PreferenceSample(
        messages=conversation(prompt),
        responses=responses,
        better_id=better_id,
        safer_id=safer_id,
        is_safe=is_safe,
        severity=severity,
        harm_categories=harm_categories,
    )


def parse_prompt(record: Mapping[str, Any]) -> PromptSample:
    """Any PKU record's prompt -> PromptSample; ``prompt_source`` kept in ``meta`` when present."""
    prompt = fields.prompt_text(record, "prompt")
    meta = {}
    source = fields.optional_text(record, "prompt_source")
    if source is not None:
        meta["prompt_source"] = source
    return PromptSample(messages=conversation(prompt), meta=meta)


def parse_qa_sft(record: Mapping[str, Any]) -> SFTSample:
    """A PKU-SafeRLHF-QA record -> SFTSample (no filtering on safety: select safe data upstream if you need to)."""
    return SFTSample(
        messages=conversation(fields.prompt_text(record, "prompt")),
        response=fields.response_text(record, "response"),
    )


def _category_ids(record: Mapping[str, Any], name: str) -> list[int]:
    value = record.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise RecordError(WRONG_TYPE, name, f"expected a list of integers, got {describe_value(value)}")
    return list(value)


def parse_qa_attributes(record: Mapping[str, Any]) -> AttributeSample:
    """A PKU-SafeRLHF-QA record -> AttributeSample with ``is_safe``, ``severity_level`` and harm-category flags.

    ``is_safe`` comes from the ``is_safe`` field when present, else it is derived as ``severity == 0``.
    Harm categories: ``harm:<name>`` from a ``harm_category`` dict, or ``harm_id:<n>`` from the integer list in
    ``safety_category`` (the index order is the dataset's; verify it against the card before naming them).
    """
    sft = parse_qa_sft(record)
    is_safe = fields.optional_bool(record, "is_safe")
    severity_field = "severity_level" if record.get("severity_level") is not None else "severity_category"
    severity = fields.optional_int_in_range(record, severity_field, 0, 3)
    if is_safe is None and severity is None:
        raise RecordError(MISSING_FIELD, "is_safe", "no safety label (is_safe, severity_level or severity_category)")
    attributes: dict[str, float] = {}
    if is_safe is None:
        assert severity is not None
        is_safe = severity == 0
    attributes["is_safe"] = float(is_safe)
    if severity is not None:
        attributes["severity_level"] = float(severity)
    for name, flag in (fields.optional_flag_dict(record, "harm_category") or {}).items():
        attributes[f"harm:{name}"] = float(flag)
    for index in _category_ids(record, "safety_category"):
        attributes[f"harm_id:{index}"] = 1.0
    return AttributeSample(messages=sft.messages, response=sft.response, attributes=attributes)


_PREFERENCE_PARSERS: dict[str, RecordParser] = {"preference": parse_preference, "prompt": parse_prompt}

PKU_SAFE_RLHF = register_reader(
    Reader(
        "pku-safe-rlhf",
        "PKU-SafeRLHF dual preferences (0-based better/safer ids, safety labels, severity, 19 harm categories)",
        _PREFERENCE_PARSERS,
        hub_id="PKU-Alignment/PKU-SafeRLHF",
    )
)
register_reader(
    Reader(
        "pku-safe-rlhf-30k",
        "legacy PKU-SafeRLHF-30K (the pku-safe-rlhf schema, safety fields only partly present)",
        _PREFERENCE_PARSERS,
        hub_id="PKU-Alignment/PKU-SafeRLHF-30K",
    )
)
register_reader(
    Reader(
        "pku-safe-rlhf-10k",
        "legacy PKU-SafeRLHF-10K (JSON lines or one JSON list)",
        _PREFERENCE_PARSERS,
        hub_id="PKU-Alignment/PKU-SafeRLHF-10K",
    )
)
register_reader(
    Reader(
        "pku-safe-rlhf-single-dimension",
        "PKU-SafeRLHF single-dimension preferences (better_response_id only)",
        _PREFERENCE_PARSERS,
        hub_id="PKU-Alignment/PKU-SafeRLHF-single-dimension",
    )
)
register_reader(
    Reader(
        "pku-safe-rlhf-prompt",
        "PKU-SafeRLHF-prompt: prompt, prompt_source",
        {"prompt": parse_prompt},
        hub_id="PKU-Alignment/PKU-SafeRLHF-prompt",
    )
)
register_reader(
    Reader(
        "pku-safe-rlhf-qa",
        "PKU-SafeRLHF-QA: prompt + response with per-response safety labels (sft, or attribute = safety labels)",
        {"sft": parse_qa_sft, "attribute": parse_qa_attributes, "prompt": parse_prompt},
        hub_id="PKU-Alignment/PKU-SafeRLHF-QA",
    )
)

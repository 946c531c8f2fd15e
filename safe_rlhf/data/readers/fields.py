"""Typed field access for record parsers: each helper returns the value or raises a RecordError naming the field."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from safe_rlhf.data.errors import (
    CONTRADICTORY_LABELS,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    MALFORMED_DIALOGUE,
    MISSING_FIELD,
    OUT_OF_RANGE,
    WRONG_TYPE,
    RecordError,
    describe_value,
)
from safe_rlhf.data.types import ROLES, Message, Messages


def require(record: Mapping[str, Any], name: str) -> Any:
    """The value of a required field; absent or null is a ``missing_field`` error."""
    value = record.get(name)
    if value is None:
        raise RecordError(MISSING_FIELD, name, "required field is missing" if name not in record else "is null")
    return value


def text(record: Mapping[str, Any], name: str, *, empty_reason: str | None = None) -> str:
    """A required string field. With ``empty_reason``, an empty / whitespace-only string is an error of that reason."""
    value = require(record, name)
    if not isinstance(value, str):
        raise RecordError(WRONG_TYPE, name, f"expected a string, got {describe_value(value)}")
    if empty_reason is not None and not value.strip():
        raise RecordError(empty_reason, name, "is empty" if not value else "is only whitespace")
    return value


def prompt_text(record: Mapping[str, Any], name: str) -> str:
    """A required, non-empty prompt string."""
    return text(record, name, empty_reason=EMPTY_PROMPT)


def response_text(record: Mapping[str, Any], name: str) -> str:
    """A required, non-empty response string."""
    return text(record, name, empty_reason=EMPTY_RESPONSE)


def optional_text(record: Mapping[str, Any], name: str) -> str | None:
    """An optional string field (absent, null or empty -> None)."""
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(WRONG_TYPE, name, f"expected a string, got {describe_value(value)}")
    return value if value.strip() else None


def _as_int(value: Any) -> int | None:
    """An int for int-valued input (integral floats included, as pandas exports them); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def choice_id(
    record: Mapping[str, Any], name: str, choices: tuple[int, ...] = (0, 1), numeric_strings: bool = False
) -> int:
    """A required integer id that must be one of ``choices`` (e.g. ``better_response_id`` in 0/1).

    ``numeric_strings``: also accept ``"1"`` (BeaverTails-V's hub card types its ids as strings)."""
    value = require(record, name)
    number = _as_int(value)
    if number is None and numeric_strings and isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    allowed = " or ".join(str(c) for c in choices)
    if number is None:
        raise RecordError(WRONG_TYPE, name, f"expected {allowed}, got {describe_value(value)}")
    if number not in choices:
        raise RecordError(OUT_OF_RANGE, name, f"expected {allowed}, got {number}")
    return number


def optional_choice_id(
    record: Mapping[str, Any], name: str, choices: tuple[int, ...] = (0, 1), numeric_strings: bool = False
) -> int | None:
    """Like :func:`choice_id` but absent / null -> None."""
    if record.get(name) is None:
        return None
    return choice_id(record, name, choices, numeric_strings)


def optional_int_in_range(record: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    """An optional integer in ``[low, high]``; absent / null -> None."""
    value = record.get(name)
    if value is None:
        return None
    number = _as_int(value)
    if number is None:
        raise RecordError(WRONG_TYPE, name, f"expected an integer {low}-{high}, got {describe_value(value)}")
    if not low <= number <= high:
        raise RecordError(OUT_OF_RANGE, name, f"expected an integer {low}-{high}, got {number}")
    return number


def int_in_range(record: Mapping[str, Any], name: str, low: int, high: int) -> int:
    """A required integer in ``[low, high]``."""
    require(record, name)
    number = optional_int_in_range(record, name, low, high)
    assert number is not None
    return number


def optional_bool(record: Mapping[str, Any], name: str) -> bool | None:
    """An optional JSON boolean; absent / null -> None."""
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise RecordError(WRONG_TYPE, name, f"expected true or false, got {describe_value(value)}")
    return value


def required_bool(record: Mapping[str, Any], name: str) -> bool:
    """A required JSON boolean."""
    require(record, name)
    value = optional_bool(record, name)
    assert value is not None
    return value


def yes_no(record: Mapping[str, Any], name: str) -> bool:
    """A required ``'yes'`` / ``'no'`` string (case-insensitive; BeaverTails-V); a JSON boolean is accepted too."""
    value = require(record, name)
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise RecordError(WRONG_TYPE, name, f"expected 'yes' or 'no', got {describe_value(value)}")
    lowered = value.strip().lower()
    if lowered not in ("yes", "no"):
        raise RecordError(OUT_OF_RANGE, name, f"expected 'yes' or 'no', got {value!r}")
    return lowered == "yes"


def optional_flag_dict(record: Mapping[str, Any], name: str) -> dict[str, bool] | None:
    """An optional ``{name: bool}`` dict (harm categories); absent / null -> None."""
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RecordError(
            WRONG_TYPE, name, f"expected an object of category -> true/false, got {describe_value(value)}"
        )
    flags: dict[str, bool] = {}
    for key, flag in value.items():
        if flag is None:  # a parquet struct column may hold null for a category a record lacks
            continue
        if not isinstance(flag, bool):
            raise RecordError(WRONG_TYPE, name, f"category {key!r}: expected true or false, got {describe_value(flag)}")
        flags[str(key)] = flag
    return flags


def flagged(flags: Mapping[str, bool] | None) -> frozenset[str]:
    """The names whose flag is True."""
    return frozenset(key for key, flag in (flags or {}).items() if flag)


def number(record: Mapping[str, Any], name: str, low: float | None = None, high: float | None = None) -> float:
    """A required finite number, optionally bounded to ``[low, high]``."""
    value = require(record, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RecordError(WRONG_TYPE, name, f"expected a number, got {describe_value(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise RecordError(OUT_OF_RANGE, name, f"expected a number in [{low}, {high}], got {value}")
    return float(value)


def message_list(record: Mapping[str, Any], name: str) -> list[Message]:
    """A required list of ``{"role", "content"}`` objects (roles system / user / assistant)."""
    value = require(record, name)
    if not isinstance(value, list) or not value:
        raise RecordError(WRONG_TYPE, name, f"expected a non-empty list of messages, got {describe_value(value)}")
    messages = []
    for position, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise RecordError(WRONG_TYPE, name, f"message {position}: expected an object, got {describe_value(item)}")
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise RecordError(MALFORMED_DIALOGUE, name, f"message {position}: unknown role {describe_value(role)}")
        if not isinstance(content, str):
            raise RecordError(
                WRONG_TYPE, name, f"message {position}: expected string content, got {describe_value(content)}"
            )
        messages.append(Message(role, content))
    return messages


def check_dialogue(messages: Iterable[Message], field: str) -> Messages:
    """Validate a conversation prefix (system first if any, ends with a non-empty user turn); return it as a tuple."""
    result = tuple(messages)
    if not result:
        raise RecordError(MALFORMED_DIALOGUE, field, "no user turn before the response")
    for position, message in enumerate(result):
        if message.role == "system" and position != 0:
            raise RecordError(MALFORMED_DIALOGUE, field, f"system message at position {position} (only first allowed)")
    if result[-1].role != "user":
        raise RecordError(MALFORMED_DIALOGUE, field, f"the turn before the response is {result[-1].role!r}, not 'user'")
    if not result[-1].content.strip():
        raise RecordError(EMPTY_PROMPT, field, "the last user turn is empty")
    return result


def extra_fields(record: Mapping[str, Any], used: Iterable[str]) -> dict[str, Any]:
    """The record's fields other than ``used`` (kept as ``PromptSample.meta``); bytes-like values are left out."""
    skip = set(used)
    return {
        key: value
        for key, value in record.items()
        if key not in skip and not isinstance(value, bytes | bytearray | memoryview)
    }


def check_safer_consistent(
    safer_id: int | None, is_safe: tuple[bool | None, bool | None], field: str, id_base: int = 0
) -> None:
    """Reject a safer id naming a response marked unsafe while the other one is marked safe.

    Both unsafe (or both safe) with ``safer_id`` naming either response is legal: the annotator still ranked them.
    ``id_base`` is 1 for datasets with 1-based ids, so the message uses the dataset's own numbering.
    """
    if safer_id is None:
        return
    other = 1 - safer_id
    if is_safe[safer_id] is False and is_safe[other] is True:
        raise RecordError(
            CONTRADICTORY_LABELS,
            field,
            f"names response {safer_id + id_base} as safer, but it is marked unsafe while response "
            f"{other + id_base} is marked safe",
        )

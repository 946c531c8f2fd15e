"""Generic formats: alpaca-style instructions, a plain SFT JSONL and a plain prompt JSONL.

* ``alpaca``: ``instruction, input, output``; the prompt is the instruction, followed by a blank line and the input
  when the input is non-empty. Kinds: sft, prompt.
* ``sft``: ``prompt, response`` and an optional ``system`` and ``image``. Kinds: sft, prompt (other fields kept in
  ``meta``).
* ``prompts``: ``prompt`` and an optional ``system`` and ``image``; every other field (``prompt_source``, ``risky``,
  ``topic``, ...) is kept in ``meta``. Kind: prompt.

``image`` is any form of ``safe_rlhf.data.images`` (a path relative to the data file, ``{bytes, path}``, bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_rlhf.data.errors import WRONG_TYPE, RecordError, describe_value
from safe_rlhf.data.images import optional_image
from safe_rlhf.data.readers import fields
from safe_rlhf.data.readers.registry import Reader, register_reader
from safe_rlhf.data.types import Messages, PromptSample, SFTSample, conversation


def _alpaca_messages(record: Mapping[str, Any]) -> Messages:
    instruction = fields.prompt_text(record, "instruction")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RecordError(WRONG_TYPE, "input", f"expected a string, got {describe_value(extra)}")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return conversation(prompt)


def parse_alpaca_sft(record: Mapping[str, Any]) -> SFTSample:
    """Alpaca record -> SFTSample."""
    return SFTSample(messages=_alpaca_messages(record), response=fields.response_text(record, "output"))


def parse_alpaca_prompt(record: Mapping[str, Any]) -> PromptSample:
    """Alpaca record -> PromptSample."""
    return PromptSample(messages=_alpaca_messages(record))


def _plain_messages(record: Mapping[str, Any]) -> Messages:
    return conversation(fields.prompt_text(record, "prompt"), system=fields.optional_text(record, "system"))


def parse_plain_sft(record: Mapping[str, Any], base_dir: Path | None = None) -> SFTSample:
    """``{prompt, response, system?, image?}`` -> SFTSample."""
    return SFTSample(
        messages=_plain_messages(record),
        response=fields.response_text(record, "response"),
        images=optional_image(record, "image", base_dir),
    )


def parse_plain_prompt(record: Mapping[str, Any], base_dir: Path | None = None) -> PromptSample:
    """``{prompt, system?, image?, ...}`` -> PromptSample; fields other than prompt / system / response / image go to
    ``meta``."""
    messages = _plain_messages(record)
    meta = fields.extra_fields(record, ("prompt", "system", "response", "image"))
    return PromptSample(messages=messages, meta=meta, images=optional_image(record, "image", base_dir))


register_reader(
    Reader(
        "alpaca",
        "alpaca-style {instruction, input, output}",
        {"sft": parse_alpaca_sft, "prompt": parse_alpaca_prompt},
        hub_id="tatsu-lab/alpaca",
    )
)
register_reader(
    Reader(
        "sft",
        "generic {prompt, response, system?, image?}",
        {"sft": parse_plain_sft, "prompt": parse_plain_prompt},
        takes_base_dir=True,
    )
)
register_reader(
    Reader(
        "prompts",
        "generic {prompt, system?, image?, ...extra fields -> meta}",
        {"prompt": parse_plain_prompt},
        takes_base_dir=True,
    )
)

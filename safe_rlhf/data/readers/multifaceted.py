"""Multifaceted Collection (Janus): system messages that state the user's preferences.

Record forms, told apart per record:

* SFT: ``system, prompt, output`` (+ ``main_source, original_source, preference_set``) -> sft.
* DPO: ``system, prompt, chosen, rejected``; ``chosen`` / ``rejected`` are lists of ``{role, content}`` messages
  whose last message is the assistant response (a plain string is accepted too). When the list holds no user turn,
  the dialogue is ``system`` + ``prompt``; when it has no system message, the record's ``system`` is put first.
  -> preference (``better_id = 0``, chosen first), and sft (on the chosen response).
* Bench: ``source, system, prompt, reference_answer, rubric`` -> prompt only.

Every form gives kind prompt: system message + prompt, with the source fields in ``meta``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safe_rlhf.data.errors import EMPTY_RESPONSE, MALFORMED_DIALOGUE, MISSING_FIELD, RecordError
from safe_rlhf.data.readers import fields
from safe_rlhf.data.readers.registry import Reader, register_reader
from safe_rlhf.data.types import Message, Messages, PreferenceSample, PromptSample, SFTSample, conversation

_META_FIELDS = ("main_source", "original_source", "source")


def _base_dialogue(record: Mapping[str, Any]) -> Messages:
    return conversation(fields.prompt_text(record, "prompt"), system=fields.optional_text(record, "system"))


def _dialogue_and_response(record: Mapping[str, Any], name: str) -> tuple[Messages, str]:
    value = fields.require(record, name)
    if isinstance(value, str):
        return _base_dialogue(record), fields.response_text(record, name)
    messages = fields.message_list(record, name)
    if messages[-1].role != "assistant":
        raise RecordError(MALFORMED_DIALOGUE, name, "the last message is not the assistant response")
    response = messages[-1].content
    if not response.strip():
        raise RecordError(EMPTY_RESPONSE, name, "the assistant response is empty")
    prefix = messages[:-1]
    if not any(message.role == "user" for message in prefix):
        base = _base_dialogue(record)
        if prefix and prefix[0].role == "system" and base[0].role != "system":
            base = (prefix[0], *base)
        return base, response
    system = fields.optional_text(record, "system")
    if prefix[0].role != "system" and system:
        prefix = [Message("system", system), *prefix]
    return fields.check_dialogue(prefix, name), response


def parse_sft(record: Mapping[str, Any]) -> SFTSample:
    """SFT form (``output``) or DPO form (chosen) -> SFTSample."""
    if record.get("output") is not None:
        return SFTSample(messages=_base_dialogue(record), response=fields.response_text(record, "output"))
    if record.get("chosen") is not None:
        dialogue, response = _dialogue_and_response(record, "chosen")
        return SFTSample(messages=dialogue, response=response)
    raise RecordError(MISSING_FIELD, "output", "required field is missing (and no 'chosen' either)")


def parse_preference(record: Mapping[str, Any]) -> PreferenceSample:
    """DPO form -> PreferenceSample with chosen first (``better_id = 0``)."""
    chosen_dialogue, chosen = _dialogue_and_response(record, "chosen")
    rejected_dialogue, rejected = _dialogue_and_response(record, "rejected")
    if chosen_dialogue != rejected_dialogue:
        raise RecordError(MALFORMED_DIALOGUE, "rejected", "its dialogue before the response differs from 'chosen'")
    return PreferenceSample(messages=chosen_dialogue, responses=(chosen, rejected), better_id=0)


def parse_prompt(record: Mapping[str, Any]) -> PromptSample:
    """Any form -> PromptSample (system + prompt), source fields in ``meta``."""
    meta = {key: record[key] for key in _META_FIELDS if isinstance(record.get(key), str)}
    return PromptSample(messages=_base_dialogue(record), meta=meta)


register_reader(
    Reader(
        "multifaceted",
        "Multifaceted Collection: SFT (system, prompt, output), DPO (chosen/rejected message lists), Bench prompts",
        {"sft": parse_sft, "preference": parse_preference, "prompt": parse_prompt},
        hub_id="kaist-ai/Multifaceted-Collection",
    )
)

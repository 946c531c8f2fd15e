"""HelpSteer / HelpSteer2 (NVIDIA): ``prompt, response`` scored on five attributes, each an integer 0-4.

Kinds: attribute (the five scores as floats), sft, prompt. Multi-turn HelpSteer2 prompts carry earlier turns inline,
separated by ``<extra_id_1>User`` / ``<extra_id_1>Assistant`` marker lines; they are split into messages here (the
text before the first marker is the first user turn). Verify the marker form against a real file before relying on
it: a prompt without markers is always read as one user turn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from safe_rlhf.data.readers import fields
from safe_rlhf.data.readers.registry import Reader, RecordParser, register_reader
from safe_rlhf.data.types import AttributeSample, Message, Messages, PromptSample, SFTSample, conversation

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
_TURN_MARKER = re.compile(r"\s*<extra_id_1>(User|Assistant)[ \t]*\n?")


def split_turns(prompt: str) -> Messages:
    """A HelpSteer prompt -> messages (one user turn, or the turns between ``<extra_id_1>`` markers)."""
    parts = _TURN_MARKER.split(prompt)
    if len(parts) == 1:
        return conversation(prompt)
    messages = [Message("user", parts[0].strip())] if parts[0].strip() else []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append(Message("user" if role == "User" else "assistant", content.strip()))
    return fields.check_dialogue(messages, "prompt")


def _messages(record: Mapping[str, Any]) -> Messages:
    return split_turns(fields.prompt_text(record, "prompt"))


def parse_attributes(record: Mapping[str, Any]) -> AttributeSample:
    """HelpSteer record -> AttributeSample with the five 0-4 scores."""
    messages = _messages(record)
    response = fields.response_text(record, "response")
    attributes = {name: float(fields.int_in_range(record, name, 0, 4)) for name in ATTRIBUTES}
    return AttributeSample(messages=messages, response=response, attributes=attributes)


def parse_sft(record: Mapping[str, Any]) -> SFTSample:
    """HelpSteer record -> SFTSample (scores ignored: filter upstream for quality)."""
    return SFTSample(messages=_messages(record), response=fields.response_text(record, "response"))


def parse_prompt(record: Mapping[str, Any]) -> PromptSample:
    """HelpSteer record -> PromptSample."""
    return PromptSample(messages=_messages(record))


_PARSERS: dict[str, RecordParser] = {"attribute": parse_attributes, "sft": parse_sft, "prompt": parse_prompt}
register_reader(Reader("helpsteer", "HelpSteer: five 0-4 attribute scores per response", _PARSERS, "nvidia/HelpSteer"))
register_reader(
    Reader("helpsteer2", "HelpSteer2: five 0-4 attribute scores, multi-turn prompts", _PARSERS, "nvidia/HelpSteer2")
)

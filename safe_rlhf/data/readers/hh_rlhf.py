"""Anthropic hh-rlhf: ``chosen`` / ``rejected`` raw transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.

Each transcript is split on its ``\\n\\nHuman:`` / ``\\n\\nAssistant:`` markers into turns (text stripped); the last
turn must be the Assistant's and is the response, everything before it is the dialogue (ending with a Human turn).
The two transcripts must share that dialogue. Kinds: preference (``responses = (chosen, rejected)``,
``better_id = 0``, no safety labels), sft (dialogue + chosen response), prompt (the dialogue).
Subsets (``harmless-base``, ``helpful-base``, ...) are directories of the hub repo: ``%harmless-base`` selects one,
locally as a subdirectory and on the hub as ``data_dir``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from safe_rlhf.data.errors import EMPTY_RESPONSE, MALFORMED_DIALOGUE, RecordError
from safe_rlhf.data.readers import fields
from safe_rlhf.data.readers.registry import Reader, register_reader
from safe_rlhf.data.types import Message, Messages, PreferenceSample, PromptSample, SFTSample

_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_transcript(transcript: str, field: str) -> tuple[Messages, str]:
    """``"\\n\\nHuman: q\\n\\nAssistant: a"`` -> ``((user: q,), "a")``; RecordError when it has no such shape."""
    body = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip()
    parts = _TURN.split(body)
    if parts[0].strip():
        raise RecordError(MALFORMED_DIALOGUE, field, "text before the first 'Human:' turn")
    turns = [
        Message("user" if speaker == "Human" else "assistant", content.strip())
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not turns:
        raise RecordError(MALFORMED_DIALOGUE, field, "no 'Human:' / 'Assistant:' turns found")
    if turns[-1].role != "assistant":
        raise RecordError(MALFORMED_DIALOGUE, field, "does not end with an 'Assistant:' turn")
    if not turns[-1].content:
        raise RecordError(EMPTY_RESPONSE, field, "the final 'Assistant:' turn is empty")
    return fields.check_dialogue(turns[:-1], field), turns[-1].content


def parse_preference(record: Mapping[str, Any]) -> PreferenceSample:
    """hh-rlhf record -> PreferenceSample with the chosen response first (``better_id = 0``)."""
    chosen_dialogue, chosen = split_transcript(fields.text(record, "chosen"), "chosen")
    rejected_dialogue, rejected = split_transcript(fields.text(record, "rejected"), "rejected")
    if chosen_dialogue != rejected_dialogue:
        raise RecordError(
            MALFORMED_DIALOGUE, "rejected", "its dialogue before the final response differs from 'chosen'"
        )
    return PreferenceSample(messages=chosen_dialogue, responses=(chosen, rejected), better_id=0)


def parse_sft(record: Mapping[str, Any]) -> SFTSample:
    """hh-rlhf record -> SFTSample on the chosen transcript."""
    dialogue, chosen = split_transcript(fields.text(record, "chosen"), "chosen")
    return SFTSample(messages=dialogue, response=chosen)


def parse_prompt(record: Mapping[str, Any]) -> PromptSample:
    """hh-rlhf record -> PromptSample: the dialogue before the chosen response."""
    dialogue, _ = split_transcript(fields.text(record, "chosen"), "chosen")
    return PromptSample(messages=dialogue)


register_reader(
    Reader(
        "hh-rlhf",
        "Anthropic hh-rlhf chosen/rejected transcripts (better_id = 0)",
        {"preference": parse_preference, "sft": parse_sft, "prompt": parse_prompt},
        hub_id="Anthropic/hh-rlhf",
        config_as_data_dir=True,
    )
)

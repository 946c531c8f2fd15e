"""Normalized, typed samples: what every reader produces, whatever the dataset's own schema.

Four kinds, one dataclass each (all frozen):

* ``"sft"`` -> :class:`SFTSample`: a conversation and the response to imitate.
* ``"preference"`` -> :class:`PreferenceSample`: a conversation, two responses, which is better (helpfulness) and,
  when the dataset says so, which is safer and whether each one is safe (harmlessness).
* ``"prompt"`` -> :class:`PromptSample`: a conversation to generate a response for (PPO rollouts, evaluation).
* ``"attribute"`` -> :class:`AttributeSample`: a conversation, one response and numeric labels for it
  (HelpSteer scores; per-response safety labels of BeaverTails / PKU-SafeRLHF-QA).

``messages`` always holds the conversation *before* the response being trained on or generated: an optional system
message first, then alternating user / assistant turns, ending with a user turn. ``.prompt`` is the text of that
last user turn.

``images`` holds the images of a multimodal sample (BeaverTails-V, SPA-VL, VLFeedback; empty for text): they belong
to the first user turn, as in those datasets' single-turn image questions. Each is an
:class:`~safe_rlhf.data.images.ImageRef`, checked decodable when the record was read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from safe_rlhf.data.images import ImageRef

Role: TypeAlias = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

Kind: TypeAlias = Literal["sft", "preference", "prompt", "attribute"]
KINDS: tuple[str, ...] = ("sft", "preference", "prompt", "attribute")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: Role
    """``"system"``, ``"user"`` or ``"assistant"``."""
    content: str
    """The text of the turn."""

    def to_dict(self) -> dict[str, str]:
        """The ``{"role": ..., "content": ...}`` form that ``tokenizer.apply_chat_template`` expects."""
        return {"role": self.role, "content": self.content}


Messages: TypeAlias = tuple[Message, ...]


def conversation(prompt: str, system: str | None = None, history: tuple[Message, ...] = ()) -> Messages:
    """Build ``messages`` for a single prompt: ``[system] + history + [user: prompt]`` (system omitted when empty)."""
    head = (Message("system", system),) if system else ()
    return (*head, *history, Message("user", prompt))


def _check_messages(messages: Messages) -> None:
    if not isinstance(messages, tuple) or not messages:
        raise ValueError("messages must be a non-empty tuple of Message")
    for position, message in enumerate(messages):
        if not isinstance(message, Message) or message.role not in ROLES:
            raise ValueError(f"messages[{position}] is not a Message with a role in {ROLES}: {message!r}")
        if message.role == "system" and position != 0:
            raise ValueError("a system message may only come first")
    if messages[-1].role != "user":
        raise ValueError(f"the conversation must end with a user turn, not {messages[-1].role!r}")


def _last_user_text(messages: Messages) -> str:
    return messages[-1].content


@dataclass(frozen=True)
class SFTSample:
    """A conversation and the response to imitate (supervised fine-tuning)."""

    messages: Messages
    """The conversation before the response: optional system message, history, final user turn."""
    response: str
    """The assistant response to learn (non-empty)."""
    images: tuple[ImageRef, ...] = ()
    """The images the first user turn shows (multimodal datasets); empty for text."""
    origin: str = field(default="", compare=False)
    """Where the sample came from, ``path:row``; used in error messages."""

    def __post_init__(self) -> None:
        _check_messages(self.messages)

    @property
    def prompt(self) -> str:
        """The text of the last user turn."""
        return _last_user_text(self.messages)


@dataclass(frozen=True)
class PreferenceSample:
    """Two responses to one conversation with helpfulness and (optionally) harmlessness labels.

    Ids are 0-based indexes into ``responses`` whatever the dataset uses (BeaverTails-V's 1-based ids are converted).
    """

    messages: Messages
    """The conversation before the responses."""
    responses: tuple[str, str]
    """The two candidate responses."""
    better_id: int
    """0 or 1: the more helpful response."""
    safer_id: int | None = None
    """0 or 1: the more harmless response; None when the dataset has no safety preference."""
    is_safe: tuple[bool | None, bool | None] = (None, None)
    """Per response: True safe, False unsafe, None unlabelled. Both may be False (safer_id names the less harmful)."""
    severity: tuple[int | None, int | None] = (None, None)
    """Per response: PKU-SafeRLHF severity level 0 (safe) .. 3 (severe); None when unlabelled."""
    harm_categories: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    """Per response: the harm categories flagged True (empty when none or unlabelled)."""
    images: tuple[ImageRef, ...] = ()
    """The images the first user turn shows (multimodal datasets); empty for text."""
    origin: str = field(default="", compare=False)
    """Where the sample came from, ``path:row``; used in error messages."""

    def __post_init__(self) -> None:
        _check_messages(self.messages)
        if len(self.responses) != 2:
            raise ValueError("a preference sample needs exactly two responses")
        if self.better_id not in (0, 1):
            raise ValueError(f"better_id must be 0 or 1, got {self.better_id!r}")
        if self.safer_id is not None and self.safer_id not in (0, 1):
            raise ValueError(f"safer_id must be 0, 1 or None, got {self.safer_id!r}")

    @property
    def prompt(self) -> str:
        """The text of the last user turn."""
        return _last_user_text(self.messages)

    @property
    def better(self) -> str:
        """The more helpful response."""
        return self.responses[self.better_id]

    @property
    def worse(self) -> str:
        """The less helpful response."""
        return self.responses[1 - self.better_id]

    @property
    def has_safety_labels(self) -> bool:
        """True when ``safer_id`` and both ``is_safe`` labels are known (what cost-model training needs)."""
        return self.safer_id is not None and None not in self.is_safe


@dataclass(frozen=True)
class PromptSample:
    """A conversation to generate a response for."""

    messages: Messages
    """The conversation; ends with the user turn to answer."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Extra fields of the record (e.g. ``prompt_source``, ``risky``, ``topic``, ``category``)."""
    images: tuple[ImageRef, ...] = ()
    """The images the first user turn shows (multimodal datasets); empty for text."""
    origin: str = field(default="", compare=False)
    """Where the sample came from, ``path:row``; used in error messages."""

    def __post_init__(self) -> None:
        _check_messages(self.messages)

    @property
    def prompt(self) -> str:
        """The text of the last user turn."""
        return _last_user_text(self.messages)


@dataclass(frozen=True)
class AttributeSample:
    """A conversation, one response and numeric labels for that response.

    HelpSteer: ``helpfulness``, ``correctness``, ``coherence``, ``complexity``, ``verbosity`` (0-4).
    Safety-labelled QA data: ``is_safe`` (1.0 safe / 0.0 unsafe), ``severity_level`` (0-3) where known, and
    ``harm:<category>`` (1.0 / 0.0) per harm category.
    """

    messages: Messages
    """The conversation before the response."""
    response: str
    """The response the attributes describe."""
    attributes: Mapping[str, float] = field(default_factory=dict)
    """Attribute name -> value."""
    images: tuple[ImageRef, ...] = ()
    """The images the first user turn shows (multimodal datasets); empty for text."""
    origin: str = field(default="", compare=False)
    """Where the sample came from, ``path:row``; used in error messages."""

    def __post_init__(self) -> None:
        _check_messages(self.messages)

    @property
    def prompt(self) -> str:
        """The text of the last user turn."""
        return _last_user_text(self.messages)


Sample: TypeAlias = SFTSample | PreferenceSample | PromptSample | AttributeSample

SAMPLE_TYPES: dict[str, type] = {
    "sft": SFTSample,
    "preference": PreferenceSample,
    "prompt": PromptSample,
    "attribute": AttributeSample,
}


def with_origin(sample: Sample, origin: str) -> Sample:
    """A copy of ``sample`` whose ``origin`` is set (readers do this after parsing)."""
    return dataclasses.replace(sample, origin=origin)


@dataclass
class SourceStats:
    """Counts for one component of a mixture."""

    spec: str
    """The component spec, in canonical form."""
    files: tuple[str, ...] = ()
    """The files (or the hub id) read."""
    read: int = 0
    """Records read."""
    valid: int = 0
    """Records that produced a sample."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason code -> records skipped for it (only with ``on_error="skip"``)."""
    kept: int = 0
    """Samples contributed to the result after proportion sampling (``valid`` when no proportion is given)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self) | {"files": list(self.files)}


@dataclass
class LoadStats:
    """Counts for a whole :func:`~safe_rlhf.data.load_samples` call (sums over ``sources``)."""

    read: int = 0
    """Records read over all sources."""
    kept: int = 0
    """Samples in the result."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason code -> records skipped, summed over sources."""
    sources: list[SourceStats] = field(default_factory=list)
    """Per mixture component, in spec order."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "read": self.read,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "sources": [source.to_dict() for source in self.sources],
        }


@dataclass
class LoadResult:
    """What :func:`~safe_rlhf.data.load_samples` returns."""

    samples: list[Any]
    """The samples, all of the requested kind's dataclass, mixture components concatenated in spec order."""
    stats: LoadStats
    """Read / kept / skipped counts, overall and per source."""
    kind: str = "sft"
    """The kind loaded."""
    spec: str = ""
    """The spec loaded (as given)."""

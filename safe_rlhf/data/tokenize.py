"""Rendering conversations to token ids, tokenizing samples, and collating them into padded batches.

Rendering: with ``tokenizer.chat_template`` set, the prompt is
``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)``.
A system message is kept as its own turn when the template supports one. Some templates do not (Gemma's raises on a
system role, others drop it silently); for those the system text is folded into the first user turn,
``"{system}\n\n{user}"``, so what the user values is never lost (:func:`template_keeps_system` decides, once per
template).
Otherwise the default text template (system message optional, earlier turns kept, one space between parts)::

    BEGINNING OF CONVERSATION: SYSTEM: {system} USER: {user_1} ASSISTANT: {assistant_1} USER: {user_2} ASSISTANT:

tokenized with ``add_special_tokens=True`` (so a BOS is added when the tokenizer adds one).
The response is always ``tokenizer(response, add_special_tokens=False).input_ids + [eos_token_id]``, appended to the
prompt ids (the same ids the policy produces at generation time, where the prompt ends at the generation prompt).

Lengths (``max_length`` counts tokens of the full sequence):

* SFT / preference: the prompt must leave room for at least one response token (``len(prompt) < max_length``),
  otherwise the sample is rejected with reason ``prompt_too_long``; a response that does not fit is cut at
  ``max_length`` and the cut is recorded (``response_truncated``), never silent. A truncated response has no EOS.
* Prompts (generation): ``len(prompt) <= max_length``, otherwise ``prompt_too_long``.

Padding: SFT and preference batches are right-padded, prompt batches left-padded (generation appends on the right).
The pad token must exist and differ from EOS (otherwise the end of a sequence cannot be told from padding).

Images (the modality switch): with ``vision`` (an :class:`ImageTokens` built from a VLM's processor) a sample's images
are rendered as image parts before the first user turn's text (the template's ``<image>`` placeholder), each
placeholder is expanded to the model's ``tokens_per_image`` image tokens, and every batch gets ``pixel_values``
(B, C, H, W) from the image processor, decoded from the samples' :class:`~safe_rlhf.data.images.ImageRef` at collate
time (one image per sample; a preference pair's two sequences share it). A sample that shows an image given to a
text-only model (no ``vision``) is a one-line error (``image_needs_vision_model``), not a silently dropped image;
a VLM given a text-only sample gets a one-line ``missing_image`` error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safe_rlhf.data.errors import PROMPT_TOO_LONG, DataError, TokenizerError
from safe_rlhf.data.types import (
    AttributeSample,
    LoadResult,
    Message,
    Messages,
    PreferenceSample,
    PromptSample,
    Sample,
    SFTSample,
)

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
"""Label value for tokens without a loss (prompt tokens, padding)."""

DEFAULT_TEMPLATE_BEGIN = "BEGINNING OF CONVERSATION:"
DEFAULT_ROLE_LABELS = {"system": "SYSTEM:", "user": "USER:", "assistant": "ASSISTANT:"}


# ----------------------------------------------------------------------------------------------------------------------
# rendering


def check_tokenizer(tokenizer: Any) -> None:
    """Raise TokenizerError unless the tokenizer has an EOS and a pad token distinct from it."""
    eos, pad = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "pad_token_id", None)
    if eos is None:
        raise TokenizerError("the tokenizer has no eos_token_id; set tokenizer.eos_token")
    if pad is None:
        raise TokenizerError(
            "the tokenizer has no pad token; add one distinct from EOS (e.g. tokenizer.add_special_tokens("
            "{'pad_token': '<pad>'}) and resize the model's embeddings)"
        )
    if pad == eos:
        raise TokenizerError(
            f"the tokenizer's pad token equals its EOS (id {eos}); padding would hide where sequences end: "
            "add a distinct pad token"
        )


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


_SYSTEM_PROBE = "system probe 7f3a"
_KEEPS_SYSTEM: dict[tuple[int, str], bool] = {}


def template_keeps_system(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a system turn (True for the default text template).

    Probed once per tokenizer and template: a template that raises on a system role, or whose output lacks the
    system text, does not keep it.
    """
    if not has_chat_template(tokenizer):
        return True
    key = (id(tokenizer), str(tokenizer.chat_template))
    if key not in _KEEPS_SYSTEM:
        probe = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hello"}]
        try:
            text = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
            _KEEPS_SYSTEM[key] = _SYSTEM_PROBE in str(text)
        except Exception:
            _KEEPS_SYSTEM[key] = False
    return _KEEPS_SYSTEM[key]


def fold_system(messages: Messages) -> Messages:
    """The system message folded into the first user turn (``"{system}\n\n{user}"``); unchanged without one."""
    if not messages or messages[0].role != "system":
        return messages
    system, rest = messages[0].content, list(messages[1:])
    for index, message in enumerate(rest):
        if message.role == "user":
            rest[index] = Message("user", f"{system}\n\n{message.content}")
            break
    return tuple(rest)


def _template_messages(messages: Messages, tokenizer: Any) -> list[dict[str, str]]:
    if messages and messages[0].role == "system" and not template_keeps_system(tokenizer):
        messages = fold_system(messages)
    return [message.to_dict() for message in messages]


def render_default(messages: Messages, add_generation_prompt: bool = True) -> str:
    """The default text template (module docstring); ends with ``ASSISTANT:`` when ``add_generation_prompt``."""
    parts = [DEFAULT_TEMPLATE_BEGIN]
    parts.extend(f"{DEFAULT_ROLE_LABELS[message.role]} {message.content}" for message in messages)
    if add_generation_prompt:
        parts.append(DEFAULT_ROLE_LABELS["assistant"])
    return " ".join(parts)


def render_text(messages: Messages, response: str | None = None, tokenizer: Any = None) -> str:
    """Human-readable rendering: the chat template as text when ``tokenizer`` has one, else the default template.

    With ``response`` it is appended after one space (default template) or directly (chat template).
    """
    if tokenizer is not None and has_chat_template(tokenizer):
        prompt = tokenizer.apply_chat_template(
            _template_messages(messages, tokenizer), add_generation_prompt=True, tokenize=False
        )
        return str(prompt) + (response or "")
    prompt = render_default(messages)
    return prompt if response is None else f"{prompt} {response}"


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, Mapping) or hasattr(value, "input_ids"):  # BatchEncoding / dict
        value = value["input_ids"]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value and isinstance(value[0], list):  # a batch of one
        value = value[0]
    return [int(token) for token in value]


@dataclass(frozen=True)
class ImageTokens:
    """How a VLM takes an image: ``tokens_per_image`` copies of ``image_token_id`` in the token ids, at the place the
    chat template puts ``image_token``, and pixels from ``image_processor`` (``__call__(images, return_tensors="pt")``
    with a ``pixel_values`` entry). :func:`safe_rlhf.vision_models.image_tokens` builds one from a processor."""

    image_token: str
    image_token_id: int
    tokens_per_image: int
    image_processor: Any = field(compare=False, repr=False)

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:  # -> (N, C, H, W)
        """The processor's pixel values of ``images`` (ImageRefs, decoded here)."""
        pictures = [image.load() for image in images]
        return self.image_processor(images=pictures, return_tensors="pt")["pixel_values"]


def _with_image_parts(messages: list[dict[str, Any]], num_images: int, image_token: str) -> list[dict[str, Any]]:
    """The images as image parts before the first user turn's text (the template writes its ``<image>``)."""
    for message in messages:
        if message["role"] == "user":
            parts: list[dict[str, str]] = [{"type": "image"} for _ in range(num_images)]
            message["content"] = [*parts, {"type": "text", "text": message["content"]}]
            break
    return messages


def _expand_images(ids: list[int], vision: ImageTokens, num_images: int, origin: str) -> list[int]:
    expanded: list[int] = []
    for token in ids:
        expanded.extend([token] * vision.tokens_per_image if token == vision.image_token_id else [token])
    found = ids.count(vision.image_token_id)
    if found != num_images:
        path, _, row = origin.rpartition(":")
        location: dict[str, Any] = {"path": path, "row": int(row)} if row.isdigit() and path else {}
        raise DataError(
            f"the rendered prompt holds {found} {vision.image_token} placeholders for {num_images} images "
            "(does the text already contain the image token, or does the chat template drop image parts?)",
            reason="image_token_mismatch",
            field="prompt",
            **location,
        )
    return expanded


def prompt_ids(
    messages: Messages, tokenizer: Any, num_images: int = 0, vision: ImageTokens | None = None, origin: str = ""
) -> list[int]:
    """Token ids of the prompt, ending with the generation prompt (chat template or default template); with
    ``vision``, ``num_images`` image placeholders before the first user text, each expanded to the image tokens."""
    if has_chat_template(tokenizer):
        rendered: list[dict[str, Any]] = list(_template_messages(messages, tokenizer))
        if vision is not None and num_images:
            rendered = _with_image_parts(rendered, num_images, vision.image_token)
        ids = _as_id_list(
            tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
    else:
        if vision is not None and num_images:
            first_user = next(i for i, m in enumerate(messages) if m.role == "user")
            content = vision.image_token * num_images + messages[first_user].content
            messages = (*messages[:first_user], Message("user", content), *messages[first_user + 1 :])
        ids = _as_id_list(tokenizer(render_default(messages), add_special_tokens=True))
    return _expand_images(ids, vision, num_images, origin) if vision is not None else ids


def response_ids(response: str, tokenizer: Any) -> list[int]:
    """Token ids of a response followed by EOS."""
    return [*_as_id_list(tokenizer(response, add_special_tokens=False)), int(tokenizer.eos_token_id)]


def _prompt_too_long(origin: str, length: int, max_length: int, needs_room: bool) -> DataError:
    limit = f"max_length {max_length} leaves no room for a response" if needs_room else f"max_length is {max_length}"
    path, _, row = origin.rpartition(":")
    location: dict[str, Any] = {"path": path, "row": int(row)} if row.isdigit() and path else {"path": origin or None}
    return DataError(f"prompt is {length} tokens; {limit}", reason=PROMPT_TOO_LONG, field="prompt", **location)


# ----------------------------------------------------------------------------------------------------------------------
# tokenized samples


@dataclass(frozen=True)
class TokenizedSFT:
    """One SFT sequence: prompt + response + EOS (cut at max_length)."""

    input_ids: list[int]
    """(L,) prompt ids then response ids."""
    labels: list[int]
    """(L,) ``IGNORE_INDEX`` on prompt tokens, the response ids elsewhere."""
    prompt_length: int
    """Number of prompt tokens at the start of ``input_ids``."""
    response_truncated: bool
    """True when the response (or its EOS) was cut to fit ``max_length``."""
    images: tuple[Any, ...] = ()
    """The sample's ImageRefs (decoded at collate time); empty for text."""


@dataclass(frozen=True)
class TokenizedPreference:
    """The two sequences of a preference pair, in response order (index 0 / 1 as in the sample)."""

    input_ids: tuple[list[int], list[int]]
    """Per response: prompt + response + EOS, cut at max_length."""
    prompt_length: int
    """Number of prompt tokens (shared by both sequences)."""
    response_truncated: tuple[bool, bool]
    """Per response: whether it was cut."""
    better_id: int
    """0 or 1."""
    safer_id: int | None = None
    """0, 1 or None when unlabelled."""
    is_safe: tuple[bool | None, bool | None] = (None, None)
    """Per response: safety label."""
    severity: tuple[int | None, int | None] = (None, None)
    """Per response: severity level 0-3."""
    images: tuple[Any, ...] = ()
    """The pair's ImageRefs (shared by both sequences); empty for text."""

    @property
    def lengths(self) -> tuple[int, int]:
        """Per response: sequence length in tokens."""
        return (len(self.input_ids[0]), len(self.input_ids[1]))


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt for generation."""

    input_ids: list[int]
    """(L,) prompt ids ending with the generation prompt."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """The sample's ``meta`` (e.g. ``risky``, ``prompt_source``)."""
    images: tuple[Any, ...] = ()
    """The sample's ImageRefs; empty for text."""


def _check_images(sample: Sample, vision: ImageTokens | None) -> None:
    """One image per sample for a VLM; none for a text model (never a silently dropped image)."""
    count = len(sample.images)
    path, _, row = sample.origin.rpartition(":")
    location: dict[str, Any] = {"path": path, "row": int(row)} if row.isdigit() and path else {}
    if vision is None and count:
        raise DataError(
            "the sample shows an image but the model is text-only; train a vision-language model "
            "(e.g. model.name_or_path=tiny-vlm) or use a text dataset",
            reason="image_needs_vision_model",
            field="image",
            **location,
        )
    if vision is not None and count != 1:
        raise DataError(
            f"a vision-language batch needs one image per sample, this one has {count}",
            reason="missing_image" if count == 0 else "too_many_images",
            field="image",
            **location,
        )


def _prompt_and_response(
    messages: Messages,
    response: str,
    tokenizer: Any,
    max_length: int,
    origin: str,
    num_images: int = 0,
    vision: ImageTokens | None = None,
) -> tuple[list[int], list[int], bool]:
    prompt = prompt_ids(messages, tokenizer, num_images, vision, origin)
    if len(prompt) >= max_length:
        raise _prompt_too_long(origin, len(prompt), max_length, needs_room=True)
    answer = response_ids(response, tokenizer)
    room = max_length - len(prompt)
    return prompt, answer[:room], len(answer) > room


def tokenize_sft(
    sample: SFTSample | AttributeSample, tokenizer: Any, max_length: int, vision: ImageTokens | None = None
) -> TokenizedSFT:
    """Tokenize an SFT sample; labels mask the prompt with ``IGNORE_INDEX``.

    Raises:
        TokenizerError: no pad token, or pad == EOS.
        DataError: reason ``prompt_too_long`` when the prompt leaves no room for a response token.
    """
    check_tokenizer(tokenizer)
    _check_images(sample, vision)
    prompt, answer, truncated = _prompt_and_response(
        sample.messages, sample.response, tokenizer, max_length, sample.origin, len(sample.images), vision
    )
    return TokenizedSFT(
        input_ids=prompt + answer,
        labels=[IGNORE_INDEX] * len(prompt) + answer,
        prompt_length=len(prompt),
        response_truncated=truncated,
        images=sample.images,
    )


def tokenize_preference(
    sample: PreferenceSample, tokenizer: Any, max_length: int, vision: ImageTokens | None = None
) -> TokenizedPreference:
    """Tokenize both responses of a preference pair (same prompt ids, each + EOS, each cut at ``max_length``)."""
    check_tokenizer(tokenizer)
    _check_images(sample, vision)
    prompt = prompt_ids(sample.messages, tokenizer, len(sample.images), vision, sample.origin)
    if len(prompt) >= max_length:
        raise _prompt_too_long(sample.origin, len(prompt), max_length, needs_room=True)
    room = max_length - len(prompt)
    answers = [response_ids(response, tokenizer) for response in sample.responses]
    return TokenizedPreference(
        input_ids=(prompt + answers[0][:room], prompt + answers[1][:room]),
        prompt_length=len(prompt),
        response_truncated=(len(answers[0]) > room, len(answers[1]) > room),
        better_id=sample.better_id,
        safer_id=sample.safer_id,
        is_safe=sample.is_safe,
        severity=sample.severity,
        images=sample.images,
    )


def tokenize_prompt(
    sample: Sample, tokenizer: Any, max_length: int, vision: ImageTokens | None = None
) -> TokenizedPrompt:
    """Tokenize the prompt of any sample for generation; ``prompt_too_long`` when longer than ``max_length``."""
    check_tokenizer(tokenizer)
    _check_images(sample, vision)
    prompt = prompt_ids(sample.messages, tokenizer, len(sample.images), vision, sample.origin)
    if len(prompt) > max_length:
        raise _prompt_too_long(sample.origin, len(prompt), max_length, needs_room=False)
    meta = sample.meta if isinstance(sample, PromptSample) else {}
    return TokenizedPrompt(input_ids=prompt, meta=meta, images=sample.images)


# ----------------------------------------------------------------------------------------------------------------------
# collators


def _pad(sequences: Sequence[Sequence[int]], value: int, length: int, left: bool = False) -> torch.Tensor:
    """(B, length) LongTensor of ``sequences`` padded with ``value`` on the right (or left)."""
    import torch

    batch = torch.full((len(sequences), length), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if not sequence:
            continue
        tensor = torch.as_tensor(list(sequence), dtype=torch.long)
        if left:
            batch[row, length - len(sequence) :] = tensor
        else:
            batch[row, : len(sequence)] = tensor
    return batch


def _mask(sequences: Sequence[Sequence[int]], length: int, left: bool = False) -> torch.Tensor:
    """(B, length) LongTensor: 1 on real tokens, 0 on padding."""
    return _pad([[1] * len(sequence) for sequence in sequences], 0, length, left)


def _with_pixels(batch: dict[str, torch.Tensor], items: Sequence[Any], vision: ImageTokens | None) -> dict[str, Any]:
    """``batch`` plus ``pixel_values`` (B, C, H, W), one image per item, when ``vision`` is given."""
    if vision is not None and items:
        batch["pixel_values"] = vision.pixel_values([item.images[0] for item in items])
    return batch


def collate_sft(
    items: Sequence[TokenizedSFT], pad_token_id: int, vision: ImageTokens | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded SFT batch.

    Returns:
        ``input_ids`` (B, L) padded with ``pad_token_id``; ``attention_mask`` (B, L) 1/0;
        ``labels`` (B, L) with ``IGNORE_INDEX`` on prompt and padding positions;
        with ``vision``, ``pixel_values`` (B, C, H, W).
    """
    length = max((len(item.input_ids) for item in items), default=0)
    ids = [item.input_ids for item in items]
    batch = {
        "input_ids": _pad(ids, pad_token_id, length),
        "attention_mask": _mask(ids, length),
        "labels": _pad([item.labels for item in items], IGNORE_INDEX, length),
    }
    return _with_pixels(batch, items, vision)


def _label(value: bool | int | None) -> int:
    return -1 if value is None else int(value)


def collate_preference(
    items: Sequence[TokenizedPreference], pad_token_id: int, vision: ImageTokens | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded preference batch; every (B, L) tensor shares one L (so better / worse can be concatenated).
    With ``vision``, ``pixel_values`` (B, C, H, W): the pair's image, shared by all four sequences of a row.

    Returns:
        ``better_input_ids``, ``better_attention_mask``, ``worse_input_ids``, ``worse_attention_mask`` (B, L):
            the more / less helpful sequence.
        ``safer_input_ids``, ``safer_attention_mask``, ``unsafer_input_ids``, ``unsafer_attention_mask`` (B, L):
            the more / less harmless sequence; where ``safer_id`` is unknown these repeat better / worse and
            ``has_safety_labels`` is False.
        ``safer_is_safe``, ``unsafer_is_safe`` (B,) long: 1 safe, 0 unsafe, -1 unknown
            (the cost-model sign is ``s = 1 - 2 * is_safe``: +1 unsafe, -1 safe).
        ``has_safety_labels`` (B,) bool: safer id and both is_safe labels known.
        ``better_id`` (B,) long 0/1; ``safer_id`` (B,) long 0/1, -1 unknown.
        ``is_safe`` (B, 2) long 1/0/-1 and ``severity`` (B, 2) long 0-3 / -1, in response order.
    """
    import torch

    better = [item.input_ids[item.better_id] for item in items]
    worse = [item.input_ids[1 - item.better_id] for item in items]
    safer_index = [item.better_id if item.safer_id is None else item.safer_id for item in items]
    safer = [item.input_ids[index] for item, index in zip(items, safer_index)]
    unsafer = [item.input_ids[1 - index] for item, index in zip(items, safer_index)]
    length = max((len(ids) for item in items for ids in item.input_ids), default=0)
    batch: dict[str, torch.Tensor] = {}
    for name, sequences in (("better", better), ("worse", worse), ("safer", safer), ("unsafer", unsafer)):
        batch[f"{name}_input_ids"] = _pad(sequences, pad_token_id, length)
        batch[f"{name}_attention_mask"] = _mask(sequences, length)
    batch["safer_is_safe"] = torch.tensor(
        [_label(item.is_safe[index]) for item, index in zip(items, safer_index)], dtype=torch.long
    )
    batch["unsafer_is_safe"] = torch.tensor(
        [_label(item.is_safe[1 - index]) for item, index in zip(items, safer_index)], dtype=torch.long
    )
    batch["has_safety_labels"] = torch.tensor(
        [item.safer_id is not None and None not in item.is_safe for item in items], dtype=torch.bool
    )
    batch["better_id"] = torch.tensor([item.better_id for item in items], dtype=torch.long)
    batch["safer_id"] = torch.tensor([_label(item.safer_id) for item in items], dtype=torch.long)
    batch["is_safe"] = torch.tensor([[_label(v) for v in item.is_safe] for item in items], dtype=torch.long)
    batch["severity"] = torch.tensor([[_label(v) for v in item.severity] for item in items], dtype=torch.long)
    if not items:
        batch["is_safe"] = batch["is_safe"].reshape(0, 2)
        batch["severity"] = batch["severity"].reshape(0, 2)
    return _with_pixels(batch, items, vision)


def collate_prompts(
    items: Sequence[TokenizedPrompt], pad_token_id: int, vision: ImageTokens | None = None
) -> dict[str, torch.Tensor]:
    """LEFT-padded prompt batch for generation.

    Returns:
        ``input_ids`` (B, L) with ``pad_token_id`` on the left; ``attention_mask`` (B, L) 0 on the padding;
        with ``vision``, ``pixel_values`` (B, C, H, W).
    """
    length = max((len(item.input_ids) for item in items), default=0)
    ids = [item.input_ids for item in items]
    batch = {"input_ids": _pad(ids, pad_token_id, length, left=True), "attention_mask": _mask(ids, length, left=True)}
    return _with_pixels(batch, items, vision)


# ----------------------------------------------------------------------------------------------------------------------
# tokenized dataset


@dataclass
class TokenizeStats:
    """Counts from tokenizing a dataset."""

    kept: int = 0
    """Samples tokenized and kept."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason -> samples dropped (``prompt_too_long``), with ``on_error="skip"``."""
    response_truncated: int = 0
    """Kept samples with at least one response cut at max_length."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"kept": self.kept, "skipped": dict(self.skipped), "response_truncated": self.response_truncated}


_TOKENIZE_AS = {"sft": "sft", "attribute": "sft", "preference": "preference", "prompt": "prompt"}
_KIND_OF_TYPE: dict[type, str] = {
    SFTSample: "sft",
    AttributeSample: "attribute",
    PreferenceSample: "preference",
    PromptSample: "prompt",
}


class TokenizedDataset:
    """A map-style dataset (usable with ``torch.utils.data.DataLoader``) of tokenized samples.

    ``as_kind`` picks the tokenization: ``"sft"`` (SFT / attribute samples: prompt-masked labels), ``"preference"``,
    or ``"prompt"`` (any sample's prompt, for generation). By default it follows the samples' kind (attribute
    samples are tokenized as SFT). ``collate`` is the matching collator. Samples are tokenized eagerly here, so
    problems surface before training starts; ``stats`` holds the counts (``prompt_too_long`` skips, truncations).
    """

    def __init__(
        self,
        samples: LoadResult | Sequence[Sample],
        tokenizer: Any,
        max_length: int,
        *,
        as_kind: str | None = None,
        on_error: str = "raise",
        vision: ImageTokens | None = None,
    ) -> None:
        check_tokenizer(tokenizer)
        self.vision = vision
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        sample_list = list(samples.samples if isinstance(samples, LoadResult) else samples)
        kinds = {_KIND_OF_TYPE.get(type(sample)) for sample in sample_list}
        if None in kinds:
            raise TypeError("TokenizedDataset takes SFTSample, PreferenceSample, PromptSample or AttributeSample items")
        if as_kind is None:
            if len(kinds) > 1:
                raise TypeError(f"samples of several kinds ({', '.join(sorted(map(str, kinds)))}): pass as_kind")
            source_kind = kinds.pop() if kinds else (samples.kind if isinstance(samples, LoadResult) else "sft")
            as_kind = _TOKENIZE_AS[str(source_kind)]
        if as_kind not in ("sft", "preference", "prompt"):
            raise ValueError(f"as_kind must be 'sft', 'preference' or 'prompt', got {as_kind!r}")
        self.kind = as_kind
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.max_length = max_length
        self.items: list[Any] = []
        skipped: Counter[str] = Counter()
        truncated = 0
        for sample in sample_list:
            try:
                item = self._tokenize(sample, tokenizer)
            except DataError as error:
                if on_error == "raise":
                    raise
                skipped[error.reason] += 1
                continue
            if isinstance(item, TokenizedPreference):
                truncated += int(any(item.response_truncated))
            elif isinstance(item, TokenizedSFT):
                truncated += int(item.response_truncated)
            self.items.append(item)
        self.stats = TokenizeStats(kept=len(self.items), skipped=dict(skipped), response_truncated=truncated)

    def _tokenize(self, sample: Sample, tokenizer: Any) -> Any:
        if self.kind == "prompt":
            return tokenize_prompt(sample, tokenizer, self.max_length, self.vision)
        if self.kind == "preference":
            if not isinstance(sample, PreferenceSample):
                raise TypeError(f"preference tokenization needs PreferenceSample, got {type(sample).__name__}")
            return tokenize_preference(sample, tokenizer, self.max_length, self.vision)
        if not isinstance(sample, SFTSample | AttributeSample):
            raise TypeError(f"sft tokenization needs SFTSample or AttributeSample, got {type(sample).__name__}")
        return tokenize_sft(sample, tokenizer, self.max_length, self.vision)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The collator for this dataset's kind, bound to its pad token id."""
        if self.kind == "preference":
            return collate_preference(items, self.pad_token_id, self.vision)
        if self.kind == "prompt":
            return collate_prompts(items, self.pad_token_id, self.vision)
        return collate_sft(items, self.pad_token_id, self.vision)

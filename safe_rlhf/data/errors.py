"""Errors raised by the data layer, and the reason codes used to count skipped records.

Every problem with a record surfaces as one :class:`DataError` whose ``str()`` is a single line naming the file,
the 1-based row and the field, e.g.::

    data/pku.jsonl:17: field 'better_response_id': expected 0 or 1, got 2

The row is the line number for JSON-lines files and the 1-based record index for a JSON list, a parquet / arrow
file or a hub dataset. With ``on_error="skip"`` the same problems are counted under their ``reason`` instead.
"""

from __future__ import annotations

# Reason codes: the keys of ``LoadStats.skipped`` and ``DataError.reason``.
MISSING_FIELD = "missing_field"  # a required field is absent (or null)
WRONG_TYPE = "wrong_type"  # a field has the wrong type (e.g. a string where an int is expected)
OUT_OF_RANGE = "out_of_range"  # a value outside its domain (an id that is not 0/1, a severity of 7, ...)
EMPTY_RESPONSE = "empty_response"  # a response that is empty or whitespace only
EMPTY_PROMPT = "empty_prompt"  # a prompt that is empty or whitespace only
INVALID_JSON = "invalid_json"  # a line (or file) that is not valid JSON, or a JSON value that is not an object
INVALID_UTF8 = "invalid_utf8"  # a line that is not valid UTF-8
CONTRADICTORY_LABELS = "contradictory_labels"  # the safer response is marked unsafe while the other is marked safe
MALFORMED_DIALOGUE = "malformed_dialogue"  # a transcript / message list that cannot be split into turns + response
PROMPT_TOO_LONG = "prompt_too_long"  # the rendered prompt leaves no room for a response (found at tokenization)
MISSING_IMAGE = "missing_image"  # the image file a record names does not exist
BAD_IMAGE = "bad_image"  # the image exists but does not decode (truncated, not an image, unsupported format)
NO_PREFERENCE = "no_preference"  # a rated record whose completions all tie: no pair to learn from (VLFeedback)
IMAGE_NEEDS_VISION_MODEL = "image_needs_vision_model"  # an image sample given to a text-only model

RECORD_REASONS = (
    MISSING_FIELD,
    WRONG_TYPE,
    OUT_OF_RANGE,
    EMPTY_RESPONSE,
    EMPTY_PROMPT,
    INVALID_JSON,
    INVALID_UTF8,
    CONTRADICTORY_LABELS,
    MALFORMED_DIALOGUE,
    PROMPT_TOO_LONG,
    MISSING_IMAGE,
    BAD_IMAGE,
    NO_PREFERENCE,
    IMAGE_NEEDS_VISION_MODEL,
)

_MAX_VALUE_CHARS = 60


def describe_value(value: object) -> str:
    """A short one-line rendering of a bad value for an error message: its type and a truncated repr."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    if isinstance(value, bool | int | float):
        return text
    return f"{type(value).__name__} {text}"


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")).replace("\r", " ")


class DataError(ValueError):
    """A problem with a dataset, a record in it or a dataset spec; ``str()`` is always one line.

    Attributes:
        detail: what is wrong, e.g. ``"expected 0 or 1, got 2"``.
        reason: one of the reason codes above (or ``"bad_spec"``, ``"unsupported_kind"``, ``"not_found"``, ...).
        path: the file (or hub id) the record came from; None for problems that are not about a file.
        row: 1-based line / record number within ``path``; None for whole-file problems.
        field: the offending field; None when the problem is not about one field (e.g. invalid JSON).
    """

    def __init__(
        self,
        detail: str,
        *,
        reason: str,
        path: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.detail = _one_line(detail)
        self.reason = reason
        self.path = path
        self.row = row
        self.field = field
        super().__init__(self._render())

    @property
    def location(self) -> str:
        """``path:row`` (or just ``path``; empty when there is no path)."""
        if self.path is None:
            return ""
        return self.path if self.row is None else f"{self.path}:{self.row}"

    def _render(self) -> str:
        parts = []
        if self.location:
            parts.append(self.location)
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.detail)
        return ": ".join(parts)

    def __reduce__(self) -> tuple[object, ...]:  # keep the error picklable (DataLoader workers)
        return (_rebuild_data_error, (type(self), self.detail, self.reason, self.path, self.row, self.field))


def _rebuild_data_error(
    cls: type[DataError], detail: str, reason: str, path: str | None, row: int | None, field: str | None
) -> DataError:
    return cls(detail, reason=reason, path=path, row=row, field=field)


class SpecError(DataError):
    """A dataset spec string that does not follow the grammar of :mod:`safe_rlhf.data.spec`."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="bad_spec")

    def __reduce__(self) -> tuple[object, ...]:
        return (SpecError, (self.detail,))


class RecordError(Exception):
    """Raised by a record parser for a bad record; the loader adds the file and row and turns it into a DataError.

    Not part of the public API: parsers know the field but not where the record came from.
    """

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail


class TokenizerError(ValueError):
    """A tokenizer that cannot be used for training, e.g. one without a pad token or whose pad token is EOS."""

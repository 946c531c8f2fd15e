"""Dataset specs: a one-line grammar naming a mixture of datasets, and :func:`load_samples`, which loads one.

Grammar (every spec is also a valid unquoted hydra override value, e.g.
``data.train=pku-safe-rlhf:/data/pku*0.3+toyworld:preference``)::

    mixture    := component ("+" component)*
    component  := READER ":" [SOURCE] ["%" CONFIG] ["@" SPLIT] ["*" PROPORTION]

* ``READER``: a registered reader name (``pku-safe-rlhf``, ``hh-rlhf``, ``toyworld``, ...; see ``available_readers()``).
* ``SOURCE``: a local file, directory or glob (``/data/pku``, ``./x.jsonl``, ``/data/*.parquet``), a hub id
  (``PKU-Alignment/PKU-SafeRLHF``), or for ``toyworld`` one of its file names. Empty: the reader's default hub id.
  It may not contain ``+``, ``%`` or ``@``; a trailing ``*NUMBER`` is always read as the proportion.
* ``CONFIG``: a dataset config / subset: a subdirectory of a local copy (case-insensitive, also under ``data/``), or
  the hub config name (``data_dir`` for hh-rlhf). E.g. ``%alpaca-7b``, ``%harmless-base``.
* ``SPLIT``: overrides the ``split`` argument of :func:`load_samples` for this component (``@test``, ``@30k_train``).
* ``PROPORTION``: a decimal number > 0 (``0.3``, ``.5``, ``2``; a negative exponent like ``1e-05`` is accepted).
  At most 1: that fraction of the component's valid samples (rounded to the nearest integer), drawn without
  replacement and kept in file order. Above 1: the whole component repeated ``int(p)`` times plus a ``p - int(p)``
  fraction (upsampling). Omitted: everything once.

Sampling is deterministic given ``seed``: each component draws from ``random.Random(f"{seed}/{index}/{component}")``.
Characters hydra treats specially (``,`` ``=`` ``[ ] { } ( )`` quotes, spaces, ``~``) cannot appear unquoted in an
override; a path that needs them has to be quoted on the command line (or symlinked).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from safe_rlhf.data.errors import DataError, RecordError, SpecError
from safe_rlhf.data.readers import get_reader
from safe_rlhf.data.types import KINDS, LoadResult, LoadStats, Sample, SourceStats, with_origin

ON_ERROR_CHOICES = ("raise", "skip")

_NAME = r"[A-Za-z0-9_.\-]+"
_READER_RE = re.compile(rf"{_NAME}")
_PROPORTION_RE = re.compile(r"\*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE]-?\d+)?)$")
_QUALIFIER_RE = re.compile(rf"([%@])({_NAME})")


@dataclass(frozen=True)
class DatasetSpec:
    """One component of a mixture: ``READER:SOURCE%CONFIG@SPLIT*PROPORTION``."""

    reader: str
    """Registered reader name."""
    source: str = ""
    """Local path / glob / hub id / toyworld name; empty for the reader's default hub id."""
    config: str | None = None
    """Dataset config or subset, if any."""
    split: str | None = None
    """Split override; None uses the split passed to :func:`load_samples`."""
    proportion: float | None = None
    """Fraction (<= 1) or upsampling factor (> 1) of the component; None for everything once."""

    def __str__(self) -> str:
        text = f"{self.reader}:{self.source}"
        if self.config is not None:
            text += f"%{self.config}"
        if self.split is not None:
            text += f"@{self.split}"
        if self.proportion is not None:
            text += f"*{_format_proportion(self.proportion)}"
        return text


def _format_proportion(proportion: float) -> str:
    """The shortest text that parses back to ``proportion`` (``0.3``, ``2``, ``1e-05``)."""
    text = repr(float(proportion))
    return text[:-2] if text.endswith(".0") else text


def _parse_component(text: str) -> DatasetSpec:
    if not text:
        raise SpecError("empty dataset in spec (two '+' in a row, or a leading / trailing '+')")
    reader, colon, rest = text.partition(":")
    if not colon:
        raise SpecError(f"dataset {text!r} has no reader: write READER:SOURCE, e.g. sft:{text}")
    if not _READER_RE.fullmatch(reader):
        raise SpecError(f"bad reader name {reader!r} in {text!r}")
    proportion = None
    match = _PROPORTION_RE.search(rest)
    if match:
        proportion = float(match.group(1))
        if not math.isfinite(proportion) or proportion <= 0:
            raise SpecError(f"proportion in {text!r} must be a number > 0, got {match.group(1)}")
        rest = rest[: match.start()]
    cut = min((i for i in (rest.find("%"), rest.find("@")) if i >= 0), default=len(rest))
    source, tail = rest[:cut], rest[cut:]
    qualifiers: dict[str, str] = {}
    position = 0
    for qualifier in _QUALIFIER_RE.finditer(tail):
        if qualifier.start() != position:
            break
        symbol, value = qualifier.groups()
        if symbol in qualifiers:
            raise SpecError(f"{text!r} gives {symbol!r} twice")
        qualifiers[symbol] = value
        position = qualifier.end()
    if position != len(tail):
        raise SpecError(f"cannot parse {tail[position:]!r} in {text!r}: expected %CONFIG, @SPLIT or *PROPORTION")
    if re.search(r"\s", source):
        raise SpecError(f"whitespace in source {source!r}")
    return DatasetSpec(reader, source, qualifiers.get("%"), qualifiers.get("@"), proportion)


def parse_spec(spec: str) -> list[DatasetSpec]:
    """Parse a mixture spec into its components (a SpecError, one line, for anything off-grammar)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty dataset spec {spec!r}")
    return [_parse_component(part) for part in spec.strip().split("+")]


def format_spec(components: list[DatasetSpec]) -> str:
    """The canonical spec string for ``components`` (``parse_spec(format_spec(c)) == c``)."""
    return "+".join(str(component) for component in components)


def select_indices(count: int, proportion: float | None, rng: random.Random) -> list[int]:
    """Indexes into ``count`` samples for a proportion (see the module docstring): repeats, then a sorted sample."""
    if proportion is None:
        return list(range(count))
    whole = int(proportion)
    fraction = proportion - whole
    picked = sorted(rng.sample(range(count), round(fraction * count)))
    return list(range(count)) * whole + picked


def load_samples(spec: str, kind: str, split: str = "train", on_error: str = "raise", seed: int = 0) -> LoadResult:
    """Load every sample of a dataset mixture as normalized dataclasses of ``kind``.

    Args:
        spec: a mixture spec (grammar in the module docstring), e.g. ``"pku-safe-rlhf:/data/pku*0.3+toyworld:sft"``.
        kind: ``"sft"``, ``"preference"``, ``"prompt"`` or ``"attribute"``; each reader supports some of them.
        split: the split read from directories / hub datasets, unless a component gives ``@SPLIT``.
        on_error: ``"raise"``: the first bad record raises a one-line DataError (file, row, field);
            ``"skip"``: bad records are dropped and counted per reason in ``stats.skipped``.
        seed: seed for proportion sampling.

    Returns:
        A LoadResult: ``samples`` (components concatenated in spec order) and ``stats`` (read / kept / skipped,
        overall and per source).

    Raises:
        DataError: a bad spec, an unknown reader, a kind the reader cannot produce, a missing file, or (with
            ``on_error="raise"``) a bad record.
    """
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r}; expected one of: {', '.join(KINDS)}", reason="bad_spec")
    if on_error not in ON_ERROR_CHOICES:
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}", reason="bad_spec")
    components = parse_spec(spec)
    for component in components:  # fail on names and kinds before reading anything
        _check_kind(component, kind)
    samples: list[Sample] = []
    stats = LoadStats()
    for index, component in enumerate(components):
        source_stats, valid = _load_component(component, kind, component.split or split, on_error)
        chosen = select_indices(len(valid), component.proportion, random.Random(f"{seed}/{index}/{component}"))
        samples.extend(valid[i] for i in chosen)
        source_stats.kept = len(chosen)
        stats.sources.append(source_stats)
    stats.read = sum(source.read for source in stats.sources)
    stats.kept = len(samples)
    stats.skipped = dict(sum((Counter(source.skipped) for source in stats.sources), Counter()))
    return LoadResult(samples=samples, stats=stats, kind=kind, spec=spec)


def _check_kind(component: DatasetSpec, kind: str) -> None:
    reader = get_reader(component.reader)
    kinds = reader.kinds_for(component.source)
    if kind not in kinds:
        shown = component.reader if reader.opener is None else f"{component.reader}:{component.source}"
        raise DataError(
            f"dataset {shown!r} cannot produce kind {kind!r}; it supports: {', '.join(kinds)}",
            reason="unsupported_kind",
        )


def _load_component(component: DatasetSpec, kind: str, split: str, on_error: str) -> tuple[SourceStats, list[Sample]]:
    reader = get_reader(component.reader)
    opened = reader.open(component.source, component.config, split, kind)
    stats = SourceStats(spec=str(component), files=opened.files)
    skipped: Counter[str] = Counter()
    valid: list[Sample] = []
    for raw in opened.records:
        stats.read += 1
        try:
            if raw.error is not None:
                raise raw.error
            assert raw.data is not None
            if opened.takes_base_dir:  # image paths resolve against the record's own file
                sample = opened.parse(raw.data, Path(raw.path).parent if opened.local else None)
            else:
                sample = opened.parse(raw.data)
        except RecordError as error:
            if on_error == "raise":
                raise DataError(
                    error.detail, reason=error.reason, path=raw.path, row=raw.row, field=error.field
                ) from None
            skipped[error.reason] += 1
            continue
        except DataError:
            raise
        except (ValueError, TypeError) as error:  # a record the parser did not foresee: still name its location
            if on_error == "raise":
                detail = f"invalid record ({type(error).__name__}: {error})"
                raise DataError(detail, reason="invalid_record", path=raw.path, row=raw.row) from None
            skipped["invalid_record"] += 1
            continue
        valid.append(with_origin(sample, raw.origin))
    stats.valid = len(valid)
    stats.skipped = dict(skipped)
    return stats, valid

"""The reader registry: each dataset format registers a :class:`Reader` by name.

A reader maps a kind (``"sft"``, ``"preference"``, ``"prompt"``, ``"attribute"``) to a record parser, a function
``(record: Mapping[str, Any]) -> Sample`` that raises :class:`~safe_rlhf.data.errors.RecordError` for a bad record.
A reader with ``takes_base_dir`` (the multimodal datasets) has parsers ``(record, base_dir) -> Sample``: ``base_dir``
is the directory of the file the record came from (None for a hub dataset), against which image paths resolve.
Opening a reader on a source (local path, glob or hub id) yields raw records tagged with file and row; the loader in
:mod:`safe_rlhf.data.spec` parses them and applies the ``on_error`` policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from safe_rlhf.data.errors import DataError
from safe_rlhf.data.readers.files import RawRecord, iter_file, iter_hub, looks_local, resolve_local
from safe_rlhf.data.types import Sample

RecordParser = Callable[..., Sample]
"""``(record) -> Sample``, or ``(record, base_dir) -> Sample`` for a reader with ``takes_base_dir``."""


@dataclass(frozen=True)
class OpenedSource:
    """A source ready to read: its raw records, the parser for the requested kind and the files behind it."""

    records: Iterable[RawRecord]
    """Raw records in file order (lazy)."""
    parse: RecordParser
    """Turns one record into a sample of the requested kind."""
    files: tuple[str, ...]
    """The files (or hub id) read, for the stats."""
    takes_base_dir: bool = False
    """``parse(record, base_dir)``: the directory of the record's file (None for a hub dataset) as second argument."""
    local: bool = True
    """The records come from local files (``RawRecord.path`` is a file), not from the hub."""


Opener = Callable[["Reader", str, "str | None", str, str], OpenedSource]


@dataclass(frozen=True)
class Reader:
    """One registered dataset format."""

    name: str
    """The registry name used in specs, e.g. ``"pku-safe-rlhf"``."""
    description: str
    """One line for ``--help`` and docs."""
    parsers: Mapping[str, RecordParser]
    """Kind -> record parser; the keys are the kinds this reader supports."""
    hub_id: str | None = None
    """The hub dataset read when a spec gives no source (``pku-safe-rlhf:``); needs a network."""
    config_as_data_dir: bool = False
    """Pass the spec's config to ``load_dataset`` as ``data_dir`` (hh-rlhf subsets) rather than as the config name."""
    opener: Opener | None = field(default=None, compare=False)
    """Custom source resolution (toyworld); by default sources are local paths / globs or hub ids."""
    source_kinds: Callable[[str], tuple[str, ...]] | None = field(default=None, compare=False)
    """For readers whose kinds depend on the source (toyworld): source -> kinds."""
    takes_base_dir: bool = False
    """The parsers take ``(record, base_dir)``: records name image files relative to their data file."""

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this reader can produce (for any source)."""
        return tuple(self.parsers)

    def kinds_for(self, source: str) -> tuple[str, ...]:
        """The kinds this reader can produce from ``source``."""
        return self.source_kinds(source) if self.source_kinds is not None else self.kinds

    def parser_for(self, kind: str, shown_as: str | None = None) -> RecordParser:
        """The parser for ``kind``, or a DataError naming the dataset and the kinds it supports."""
        if kind not in self.parsers:
            raise DataError(
                f"dataset {shown_as or self.name!r} cannot produce kind {kind!r}; it supports: {', '.join(self.kinds)}",
                reason="unsupported_kind",
            )
        return self.parsers[kind]

    def open(self, source: str, config: str | None, split: str, kind: str) -> OpenedSource:
        """Resolve ``source`` and return its records with the parser for ``kind``."""
        if self.opener is not None:
            return self.opener(self, source, config, split, kind)
        parse = self.parser_for(kind)
        if not source:
            if self.hub_id is None:
                raise DataError(f"dataset {self.name!r} needs a path: {self.name}:PATH", reason="bad_spec")
            source = self.hub_id
        if looks_local(source):
            paths = resolve_local(source, split, config)

            def local_records() -> Iterator[RawRecord]:
                for path in paths:
                    yield from iter_file(path, split)

            return OpenedSource(local_records(), parse, tuple(str(p) for p in paths), self.takes_base_dir)
        records = iter_hub(source, split, config, self.config_as_data_dir)
        return OpenedSource(records, parse, (f"{source}@{split}",), self.takes_base_dir, local=False)


_REGISTRY: dict[str, Reader] = {}


def register_reader(reader: Reader, aliases: Iterable[str] = ()) -> Reader:
    """Register ``reader`` under its name (and ``aliases``); a name registered twice is an error."""
    for name in (reader.name, *aliases):
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not reader:
            raise ValueError(f"a dataset reader named {name!r} is already registered")
        _REGISTRY[key] = reader
    return reader


def get_reader(name: str) -> Reader:
    """The reader registered as ``name`` (case-insensitive), or a DataError listing the known names."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise DataError(
            f"unknown dataset reader {name!r}; known: {', '.join(available_readers())}", reason="bad_spec"
        ) from None


def available_readers() -> list[str]:
    """All registered names (aliases included), sorted."""
    return sorted(_REGISTRY)

"""Finding the files a source names and reading raw records out of them, each tagged with its file and row.

Formats:

* ``.jsonl`` (and ``.jsonl.gz`` / ``.xz`` / ``.bz2``): read line by line here, not through ``datasets``, so that an
  undecodable line is reported with its line number (``datasets`` raises an opaque error for the whole file).
  Blank lines are not records and are passed over.
* ``.json`` (and compressed): a JSON list of objects when the first non-blank character is ``[`` (the form legacy
  PKU-SafeRLHF-10K copies circulate in; rows are 1-based list indexes), JSON lines otherwise.
  A JSON list that does not parse is a whole-file error: it is raised even with ``on_error="skip"``, because the
  number of records lost cannot be known.
* ``.parquet``: read in record batches with ``pyarrow`` (the library ``datasets`` stores its data with; reading the
  file directly avoids a copy into the ``datasets`` cache).
* ``.arrow`` files and ``save_to_disk`` directories: through ``datasets`` (memory-mapped).
* Hub ids (``owner/name``): ``datasets.load_dataset``; needs a network or a populated cache, never used by tests.

A file that cannot be read at all (a corrupt or truncated ``.gz``, a file that is not parquet, an I/O error) is a
whole-file DataError naming the last row read, raised even with ``on_error="skip"``. A JSON value that Python cannot
hold (nested too deeply, an integer of thousands of digits) is invalid JSON, and a string with a lone UTF-16
surrogate escape (``"\\ud800"``, not Unicode: tokenizers and printing would fail on it later) is invalid UTF-8.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import os
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from safe_rlhf.data.errors import INVALID_JSON, INVALID_UTF8, DataError, RecordError

JSON_SUFFIXES = (".jsonl", ".json")
COMPRESSION_SUFFIXES = (".gz", ".xz", ".bz2")
TABLE_SUFFIXES = (".parquet", ".arrow")
_SPLIT_WORDS = frozenset({"train", "test", "validation", "valid", "val", "dev", "eval", "evaluation"})
_SPLIT_ALIASES = {
    "validation": frozenset({"validation", "valid", "val", "dev"}),
    "valid": frozenset({"validation", "valid", "val", "dev"}),
    "val": frozenset({"validation", "valid", "val", "dev"}),
    "dev": frozenset({"validation", "valid", "val", "dev"}),
    "eval": frozenset({"eval", "evaluation"}),
    "evaluation": frozenset({"eval", "evaluation"}),
}
_GLOB_CHARS = re.compile(r"[*?\[]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a \udXXX escape: a pair (emoji) or a lone surrogate
# What reading (not parsing) a file can raise: I/O errors, corrupt or truncated compressed streams.
_READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


@dataclass(frozen=True)
class RawRecord:
    """One record as read: either ``data`` (a JSON object / table row) or ``error`` (why it is unreadable)."""

    path: str
    """The file (or hub id) it came from, as shown in error messages."""
    row: int
    """1-based line number (JSON lines) or record index (JSON list, parquet, arrow, hub)."""
    data: Mapping[str, Any] | None = None
    """The record's fields; None when ``error`` is set."""
    error: RecordError | None = None
    """Why the record could not be read (invalid JSON / UTF-8, not an object)."""

    @property
    def origin(self) -> str:
        """``path:row``."""
        return f"{self.path}:{self.row}"


def data_format(path: Path) -> str | None:
    """``"jsonl"``, ``"json"``, ``"parquet"``, ``"arrow"`` for a supported file name, else None."""
    name = path.name.lower()
    for compression in COMPRESSION_SUFFIXES:
        if name.endswith(compression):
            name = name[: -len(compression)]
            break
    else:
        for suffix in TABLE_SUFFIXES:
            if name.endswith(suffix):
                return suffix[1:]
    for suffix in JSON_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    return None


def looks_local(source: str) -> bool:
    """Whether ``source`` names local files rather than a hub id.

    Local: it exists, starts with ``/``, ``./``, ``../`` or ``~``, contains a glob character, or ends with a data
    file suffix. Anything else (``owner/name``) is taken for a hub id.
    """
    if source.startswith(("/", "./", "../", "~", ".\\")) or source in (".", ".."):
        return True
    if _GLOB_CHARS.search(source) or os.path.exists(source):
        return True
    return data_format(Path(source)) is not None


def _split_tokens(text: str) -> list[str]:
    return [token for token in re.split(r"[/\\._\-]+", text.lower()) if token]


def _matches_split(relative: str, split: str) -> bool:
    file_tokens = set(_split_tokens(relative))
    for token in _split_tokens(split):
        accepted = _SPLIT_ALIASES.get(token, frozenset({token}))
        if not file_tokens & accepted:
            return False
    return True


def _has_split_word(relative: str) -> bool:
    return bool(set(_split_tokens(relative)) & _SPLIT_WORDS)


def _find_subdir(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/data/name``, matching ``name`` case-insensitively (alpaca-7b ~ Alpaca-7B)."""
    for parent in (directory, directory / "data"):
        if not parent.is_dir():
            continue
        for child in sorted(parent.iterdir()):
            if child.is_dir() and child.name.lower() == name.lower():
                return child
    return None


def is_saved_dataset(path: Path) -> bool:
    """A directory written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def resolve_local(source: str, split: str, config: str | None) -> list[Path]:
    """The data files (or one ``save_to_disk`` directory) that a local source names for ``split``.

    * A file: that file (the split is not consulted: the user named the data).
    * A glob: the matching data files, sorted (split not consulted either).
    * A directory: with ``config``, first narrowed to the subdirectory ``config`` (or ``data/config``), matched
      case-insensitively; then the data files below it whose relative path contains every word of the split
      (``train`` matches ``train.jsonl``, ``data/train-00000-of-00001.parquet``; ``30k_train`` matches
      ``30k/train.jsonl``; ``validation`` also matches ``val`` / ``valid`` / ``dev``). When no file there carries
      a split word at all, the files are taken as the ``train`` split (and other splits are not found).
    """
    expanded = os.path.expanduser(source)
    if _GLOB_CHARS.search(expanded) and not os.path.exists(expanded):
        matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True))
        files = [p for p in matches if (p.is_file() and data_format(p)) or is_saved_dataset(p)]
        if not files:
            raise DataError(f"no data files match the pattern {source!r}", reason="not_found")
        return files
    path = Path(expanded)
    if path.is_file():
        if data_format(path) is None:
            raise DataError(
                f"{source}: unsupported file type (expected .jsonl, .json, .parquet or .arrow, optionally "
                ".gz/.xz/.bz2 for JSON)",
                reason="unsupported_format",
            )
        return [path]
    if not path.is_dir():
        raise DataError(f"{source}: no such file or directory", reason="not_found")
    if config:
        subdir = _find_subdir(path, config)
        if subdir is None:
            raise DataError(f"{source}: no subdirectory for config {config!r}", reason="not_found")
        path = subdir
    if is_saved_dataset(path):
        return [path]
    candidates = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and data_format(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not candidates:
        raise DataError(f"{path}: no data files (.jsonl, .json, .parquet, .arrow) found", reason="not_found")
    relative = {p: p.relative_to(path).as_posix() for p in candidates}
    chosen = [p for p in candidates if _matches_split(relative[p], split)]
    if chosen:
        return chosen
    if split == "train" and not any(_has_split_word(r) for r in relative.values()):
        return candidates
    names = ", ".join(relative[p] for p in candidates[:8])
    raise DataError(f"{path}: no file for split {split!r} (found: {names})", reason="not_found")


def _open_binary(path: Path) -> BinaryIO:
    name = path.name.lower()
    if name.endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    if name.endswith(".xz"):
        return cast(BinaryIO, lzma.open(path, "rb"))
    if name.endswith(".bz2"):
        return cast(BinaryIO, bz2.open(path, "rb"))
    return open(path, "rb")


def _lone_surrogate(value: dict[str, Any]) -> RecordError | None:
    """An ``invalid_utf8`` error when a string in ``value`` has a lone UTF-16 surrogate (a ``\\udXXX`` escape)."""
    for key, item in value.items():
        try:
            json.dumps([key, item], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            field = key if key.isascii() else None
            return RecordError(
                INVALID_UTF8, field, "contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), not Unicode"
            )
    return None


def _record_from_value(display: str, row: int, value: Any, check_surrogates: bool = False) -> RawRecord:
    if isinstance(value, dict):
        error = _lone_surrogate(value) if check_surrogates else None
        if error is not None:
            return RawRecord(display, row, error=error)
        return RawRecord(display, row, data=value)
    kind = "null" if value is None else type(value).__name__
    return RawRecord(display, row, error=RecordError(INVALID_JSON, None, f"expected a JSON object, got {kind}"))


def iter_json_lines(path: Path, display: str) -> Iterator[RawRecord]:
    """Records of a JSON-lines file, one per non-blank line; bad lines come back as records with ``error`` set."""
    with _open_binary(path) as handle:
        for row, raw in enumerate(handle, start=1):
            if row == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                detail = f"line is not valid UTF-8 (byte {error.start}: {raw[error.start : error.start + 1]!r})"
                yield RawRecord(display, row, error=RecordError(INVALID_UTF8, None, detail))
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as error:
                yield RawRecord(display, row, error=RecordError(INVALID_JSON, None, _json_error_detail(error)))
                continue
            yield _record_from_value(display, row, value, bool(_SURROGATE_ESCAPE.search(text)))


def _json_error_detail(error: ValueError | RecursionError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON: {error.msg} (column {error.colno})"
    if isinstance(error, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"invalid JSON: {str(error).split(';')[0]}"  # e.g. an integer of more than 4300 digits


def iter_json_document(path: Path, display: str) -> Iterator[RawRecord]:
    """Records of a ``.json`` file: a JSON list of objects, or JSON lines when the file does not start with ``[``."""
    with _open_binary(path) as handle:
        content = handle.read()
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    if not content.lstrip().startswith(b"["):
        yield from iter_json_lines(path, display)
        return
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        raise DataError("file is not valid UTF-8", reason=INVALID_UTF8, path=display, row=line) from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"invalid JSON ({error.msg}, column {error.colno}): the whole JSON list is unreadable",
            reason=INVALID_JSON,
            path=display,
            row=error.lineno,
        ) from None
    except (ValueError, RecursionError) as error:
        detail = _json_error_detail(error).removeprefix("invalid JSON: ")
        raise DataError(
            f"invalid JSON ({detail}): the whole JSON list is unreadable", reason=INVALID_JSON, path=display
        ) from None
    check_surrogates = bool(_SURROGATE_ESCAPE.search(text))
    for row, value in enumerate(values, start=1):
        yield _record_from_value(display, row, value, check_surrogates)


def iter_parquet(path: Path, display: str) -> Iterator[RawRecord]:
    """Rows of a parquet file, read in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for value in batch.to_pylist():
                row += 1
                yield _record_from_value(display, row, value)
    except pa.ArrowException as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise DataError(
            f"unreadable parquet file{f' after row {row}' if row else ''} ({type(error).__name__}: {first_line})",
            reason="unreadable",
            path=display,
        ) from None


def _iter_dataset(dataset: Any, display: str) -> Iterator[RawRecord]:
    row = 0
    for batch in dataset.iter(batch_size=1024):
        columns = list(batch)
        size = len(batch[columns[0]]) if columns else 0
        for index in range(size):
            row += 1
            yield _record_from_value(display, row, {column: batch[column][index] for column in columns})


def iter_arrow(path: Path, display: str) -> Iterator[RawRecord]:
    """Rows of an ``.arrow`` file written by ``datasets`` (stream format) or a plain Arrow IPC file."""
    import datasets

    try:
        dataset = datasets.Dataset.from_file(str(path))
    except Exception:  # not the stream format datasets writes: try the Arrow IPC file format
        import pyarrow.ipc

        try:
            table = pyarrow.ipc.open_file(str(path)).read_all()
        except Exception as error:
            raise DataError(
                f"unreadable Arrow file ({type(error).__name__})", reason="unreadable", path=display
            ) from None
        dataset = datasets.Dataset(table)
    yield from _iter_dataset(dataset, display)


def iter_saved_dataset(path: Path, display: str, split: str) -> Iterator[RawRecord]:
    """Rows of a ``save_to_disk`` directory (a DatasetDict is indexed by ``split``)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # a half-written or foreign directory: datasets raises many kinds of errors
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise DataError(
            f"unreadable save_to_disk directory ({type(error).__name__}: {first_line})",
            reason="unreadable",
            path=display,
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"no split {split!r} (has: {', '.join(loaded)})", reason="not_found", path=display)
        loaded = loaded[split]
    yield from _iter_dataset(loaded, f"{display}@{split}" if (path / "dataset_dict.json").is_file() else display)


def iter_file(path: Path, split: str, display: str | None = None) -> Iterator[RawRecord]:
    """Records of one local data file (or ``save_to_disk`` directory), whatever its format.

    A file that cannot be read (I/O error, corrupt or truncated compressed stream) is a whole-file DataError naming
    the last row read, raised even with ``on_error="skip"``: how many records were lost cannot be known.
    """
    shown = display if display is not None else str(path)
    if is_saved_dataset(path):
        yield from iter_saved_dataset(path, shown, split)
        return
    fmt = data_format(path)
    if fmt == "jsonl":
        records = iter_json_lines(path, shown)
    elif fmt == "json":
        records = iter_json_document(path, shown)
    elif fmt == "parquet":
        records = iter_parquet(path, shown)
    elif fmt == "arrow":
        records = iter_arrow(path, shown)
    else:
        raise DataError("unsupported file type", reason="unsupported_format", path=shown)
    row = 0
    try:
        for record in records:
            row = record.row
            yield record
    except _READ_ERRORS as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise DataError(
            f"unreadable file{f' after row {row}' if row else ''} ({type(error).__name__}: {first_line})",
            reason="unreadable",
            path=shown,
        ) from None


def iter_hub(hub_id: str, split: str, config: str | None, config_as_data_dir: bool) -> Iterator[RawRecord]:
    """Rows of a hub dataset through ``datasets.load_dataset`` (network or cache needed)."""
    import datasets

    display = f"{hub_id}@{split}"
    kwargs: dict[str, Any] = {"split": split}
    if config:
        kwargs["data_dir" if config_as_data_dir else "name"] = config
    try:
        dataset = datasets.load_dataset(hub_id, **kwargs)
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise DataError(
            f"could not load hub dataset {hub_id!r} (config {config!r}, split {split!r}; not a local path either): "
            f"{type(error).__name__}: {first_line}",
            reason="not_found",
        ) from None
    yield from _iter_dataset(dataset, display)

"""Images of multimodal samples: where each one comes from, checked when the record is read, decoded when used.

A record names its image in one of the forms the multimodal seed datasets use:

* a path string (VLFeedback's ``img_path``, a JSON copy of BeaverTails-V or SPA-VL): resolved against the directory
  of the data file that names it, so a dataset folder can be moved as a whole; an absolute path is taken as is;
* ``{"bytes": ..., "path": ...}``, the Hugging Face ``datasets.Image`` feature as parquet and arrow files store it
  (the bytes win; a path without bytes is resolved like a path string);
* raw ``bytes``, or a ``PIL.Image.Image`` (what ``datasets`` hands over for a hub dataset it decoded itself).

:func:`image_from_field` decodes the image once to prove it is readable, so a missing or undecodable image is a
:class:`~safe_rlhf.data.errors.RecordError` that names the record (``missing_image`` / ``bad_image``), raised at load
time or counted as a skip with ``on_error="skip"``, never a crash in the middle of training. The sample keeps an
:class:`ImageRef` (the path or the encoded bytes and the measured size), not pixels: a 100k-image dataset stays small
in memory, and :meth:`ImageRef.load` decodes on use (the collator, the image processor)::

    ref = image_from_field({"image": "images/0001.png"}, "image", base_dir=Path("/data/beavertails-v"))
    ref.size, ref.load().mode    # ((32, 32), 'RGB')
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safe_rlhf.data.errors import BAD_IMAGE, MISSING_FIELD, MISSING_IMAGE, WRONG_TYPE, RecordError, describe_value


@dataclass(frozen=True)
class ImageRef:
    """One image of a sample: a file path or encoded bytes, checked decodable when the record was read."""

    path: str | None = None
    """The resolved file path (None for embedded bytes)."""
    data: bytes | None = field(default=None, repr=False)
    """The encoded image (PNG, JPEG, ...) when it came embedded in the record."""
    size: tuple[int, int] = (0, 0)
    """(width, height) in pixels, measured when read."""

    def load(self) -> Any:
        """The image as an RGB ``PIL.Image.Image``."""
        from PIL import Image

        source = io.BytesIO(self.data) if self.data is not None else self.path
        with Image.open(source) as image:  # type: ignore[arg-type]
            return image.convert("RGB")

    @property
    def origin(self) -> str:
        """What to name in a message: the path, or ``<N embedded bytes>``."""
        return self.path if self.path is not None else f"<{len(self.data or b'')} embedded bytes>"


def _decoded_size(source: Any, shown: str, name: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            image.load()  # a full decode: a truncated file fails here, not in the collator
            return image.size
    except FileNotFoundError:
        raise RecordError(MISSING_IMAGE, name, f"image not found: {shown}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RecordError(BAD_IMAGE, name, f"image does not decode: {shown} ({detail})") from None


def _from_path(value: str, name: str, base_dir: Path | None) -> ImageRef:
    if not value.strip():
        raise RecordError(MISSING_FIELD, name, "empty image path")
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    shown = str(path)
    if not path.is_file():
        raise RecordError(MISSING_IMAGE, name, f"image not found: {shown}")
    return ImageRef(path=shown, size=_decoded_size(path, shown, name))


def _from_bytes(value: bytes, name: str) -> ImageRef:
    if not value:
        raise RecordError(BAD_IMAGE, name, "image bytes are empty")
    return ImageRef(data=bytes(value), size=_decoded_size(io.BytesIO(value), f"<{len(value)} embedded bytes>", name))


def image_from_value(value: Any, name: str, base_dir: Path | None = None) -> ImageRef:
    """An :class:`ImageRef` for one image value (path string, ``{"bytes", "path"}``, bytes or PIL image)."""
    if isinstance(value, str):
        return _from_path(value, name, base_dir)
    if isinstance(value, bytes | bytearray | memoryview):
        return _from_bytes(bytes(value), name)
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise RecordError(WRONG_TYPE, f"{name}.bytes", f"expected bytes, got {describe_value(data)}")
            return _from_bytes(bytes(data), name)
        if isinstance(path, str):
            return _from_path(path, name, base_dir)
        raise RecordError(MISSING_FIELD, name, "an image needs 'bytes' or a 'path'")
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image decoded by `datasets`
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return ImageRef(data=buffer.getvalue(), size=tuple(value.size))
    raise RecordError(
        WRONG_TYPE, name, f"expected an image path, bytes or {{bytes, path}}, got {describe_value(value)}"
    )


def image_from_field(record: Mapping[str, Any], name: str, base_dir: Path | None = None) -> ImageRef:
    """The record's image in field ``name``; a one-line RecordError when it is absent, missing or undecodable."""
    value = record.get(name)
    if value is None:
        raise RecordError(MISSING_FIELD, name, f"missing required image field {name!r}")
    return image_from_value(value, name, base_dir)


def optional_image(record: Mapping[str, Any], name: str, base_dir: Path | None = None) -> tuple[ImageRef, ...]:
    """``(image,)`` when the record has field ``name`` (checked like :func:`image_from_field`), else ``()``."""
    return () if record.get(name) is None else (image_from_value(record[name], name, base_dir),)

"""How long checkpoint checksums take: every checkpoint file is hashed when saved and again before a resume.

    python -m safe_rlhf.bench_checksum --size-mb 1024            # one 1 GiB file in a temporary directory
    python -m safe_rlhf.bench_checksum --size-mb 4096 --files 4 --dir /scratch   # on the checkpoint filesystem

Writes the files (random bytes, so no filesystem compresses or deduplicates them), then times
:func:`safe_rlhf.engines.write_manifest` and :func:`safe_rlhf.engines.verify_checkpoint` and prints MB/s for each
(MB = 10^6 bytes). The files are freshly written, so they are usually in the page cache: the figures are the hashing
speed; a checkpoint read cold from disk is bounded by the disk instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def write_files(directory: Path, size_mb: int, files: int) -> int:
    """``files`` files of ``size_mb`` MiB in total under ``directory``; returns the bytes written."""
    block = os.urandom(8 << 20)
    total = size_mb << 20
    per_file = total // files
    for index in range(files):
        remaining = per_file if index < files - 1 else total - per_file * (files - 1)
        with open(directory / f"shard_{index:02d}.pt", "wb") as handle:
            while remaining > 0:
                # A different first byte per block: no two blocks alike, whatever the filesystem does underneath.
                chunk = bytes([remaining & 0xFF]) + block[1 : min(len(block), remaining)]
                handle.write(chunk)
                remaining -= len(chunk)
    return total


def run(size_mb: int, files: int, parent: str | None) -> dict[str, float]:
    """Seconds and MB/s of write_manifest and verify_checkpoint over ``size_mb`` MiB in ``files`` files."""
    from safe_rlhf.engines import verify_checkpoint, write_manifest

    directory = Path(tempfile.mkdtemp(prefix="bench-checksum-", dir=parent))
    try:
        total = write_files(directory, size_mb, files)
        started = time.perf_counter()
        write_manifest(directory)
        manifest_seconds = time.perf_counter() - started
        started = time.perf_counter()
        verify_checkpoint(directory)
        verify_seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    megabytes = total / 1e6
    return {
        "megabytes": megabytes,
        "write_manifest_s": manifest_seconds,
        "write_manifest_mb_s": megabytes / manifest_seconds,
        "verify_s": verify_seconds,
        "verify_mb_s": megabytes / verify_seconds,
        "both_mb_s": 2 * megabytes / (manifest_seconds + verify_seconds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time the sha256 manifest of a checkpoint (write and verify).")
    parser.add_argument("--size-mb", type=int, default=1024, help="total size in MiB (default 1024)")
    parser.add_argument("--files", type=int, default=1, help="split into this many files (default 1)")
    parser.add_argument("--dir", default=None, help="where to write the temporary files (default: the system's tmp)")
    args = parser.parse_args(argv)
    if args.size_mb <= 0 or args.files <= 0:
        parser.error("--size-mb and --files must be > 0")
    result = run(args.size_mb, args.files, args.dir)
    print(
        f"{result['megabytes']:.0f} MB in {args.files} file(s): "
        f"write_manifest {result['write_manifest_s']:.2f} s ({result['write_manifest_mb_s']:.0f} MB/s), "
        f"verify_checkpoint {result['verify_s']:.2f} s ({result['verify_mb_s']:.0f} MB/s); "
        f"{result['both_mb_s']:.0f} MB/s hashed overall"
    )


if __name__ == "__main__":
    main()

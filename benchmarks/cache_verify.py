"""What a weights-cache hit costs: a full sha256 re-hash versus the verified-stamp check.

    python benchmarks/cache_verify.py [--gib 2.5] [--sparse] [--dir /tmp]

Writes one temporary file of the given size (real bytes by default: an 8 MiB random block
repeated; `--sparse` makes a hole-only file that needs no disk space but hashes zeros), stamps
it the way `ModelStore.fetch` does, then times: sha256 of the file right after writing it
(mostly from the page cache), sha256 after asking the kernel to drop the file's cached pages
(posix_fadvise DONTNEED, this file only: closer to a worker's first read after a restart), and
the stamp check a cache hit does. Prints the timings and deletes the file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from model_store.manifest import FileEntry
from model_store.store import _stamp_matches, _write_stamp, sha256_file

BLOCK = 8 << 20


def _drop_page_cache(path: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.5, help="file size in GiB (default 2.5)")
    parser.add_argument("--sparse", action="store_true", help="a sparse file (no disk space, hashes zeros)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary file goes (default /tmp)")
    parser.add_argument("--repeats", type=int, default=1000, help="stamp checks to time (default 1000)")
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="cache-verify-"))
    path = folder / "weights.bin"
    try:
        start = time.perf_counter()
        with open(path, "wb") as out:
            if args.sparse:
                out.truncate(size)
            else:
                block, left = os.urandom(BLOCK), size
                while left:
                    left -= out.write(block[: min(BLOCK, left)])
        write_s = time.perf_counter() - start
        print(f"file: {path} {size / 1e9:.2f} GB ({'sparse' if args.sparse else 'real'}), written in {write_s:.1f} s")

        start = time.perf_counter()
        digest = sha256_file(path)
        warm_s = time.perf_counter() - start
        print(f"sha256, just written (page cache):  {warm_s:7.2f} s  ({size / warm_s / 1e9:.2f} GB/s)")
        if not args.sparse and _drop_page_cache(path):
            start = time.perf_counter()
            assert sha256_file(path) == digest
            cold_s = time.perf_counter() - start
            print(f"sha256, file's pages dropped:        {cold_s:7.2f} s  ({size / cold_s / 1e9:.2f} GB/s)")

        entry = FileEntry(name="weights.bin", sha256=digest, size=size)
        stamped = path.with_name(digest)
        os.replace(path, stamped)
        path = stamped
        _write_stamp(path, entry, os.stat(path, follow_symlinks=False))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            assert _stamp_matches(path, entry)
            times.append(time.perf_counter() - start)
        print(f"stamp check (lstat + read JSON), median of {args.repeats}: {statistics.median(times) * 1e6:7.1f} µs "
              f"(max {max(times) * 1e6:.1f} µs)")
    finally:
        for item in folder.iterdir():
            item.unlink()
        folder.rmdir()
        print(f"deleted {folder}")


if __name__ == "__main__":
    main()

"""URLs and names as data, never as syntax: one file system per URL, text safe to store.

fsspec reads ``a::b`` as a chain of two file systems and ``*``, ``?``, ``[`` as glob magic, so a
file named ``a::b.png`` or a folder named ``in[1]`` would be misread. The units listed by
`inputs.layouts` hold canonical single-file-system URLs (``file:///abs/path``, ``gs://b/k``,
``memory:///k``); they are opened here with exactly one file system and the path taken
literally (`literal_fs`), never through fsspec's URL chaining.

Names that cannot be stored as text (a file or tar member name that is not valid UTF-8, which
Python carries as lone surrogates; a NUL byte) are shown with backslash escapes
(`printable`): ``b"bad\\xff.png"`` → ``"bad\\\\xff.png"`` (the four characters ``\\xff``), so
every failure row and id can be written; such an input itself becomes a failure row.
"""
from __future__ import annotations

from typing import BinaryIO

import fsspec
from fsspec import AbstractFileSystem
from fsspec.core import infer_compression, split_protocol


def literal_fs(url: str) -> tuple[AbstractFileSystem, str]:
    """The file system of `url`'s protocol (local when it has none) and its path, taken
    literally: no ``::`` chaining, no glob. Storage options come from fsspec's config and the
    URL itself (as with `fsspec.core.url_to_fs`)."""
    protocol = split_protocol(url)[0] or "file"
    cls = fsspec.get_filesystem_class(protocol)
    fs = fsspec.filesystem(protocol, **cls._get_kwargs_from_urls(url))
    return fs, cls._strip_protocol(url)


def open_binary(url: str, decompress: bool = False) -> BinaryIO:
    """Open `url` for reading with `literal_fs`; `decompress`: undo a compression that the
    file name says (``.gz``, ``.bz2``, ``.xz``, ...)."""
    fs, path = literal_fs(url)
    compression = infer_compression(path) if decompress else None
    return fs.open(path, "rb", compression=compression)


def is_storable(text: str) -> bool:
    """True when `text` is valid UTF-8 text without NUL bytes."""
    return "\x00" not in text and is_utf8(text)


def is_utf8(text: str) -> bool:
    """False when `text` came from bytes that are not valid UTF-8 (it holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with undecodable bytes as ``\\xNN`` and NUL as ``\\x00``: always valid UTF-8."""
    if is_storable(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no byte maps to
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")

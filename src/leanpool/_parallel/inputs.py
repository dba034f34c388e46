"""Input sources: where a job's arguments come from, as GNU parallel reads them.

A source is the values after ``:::`` on the command line, a file after ``::::`` or
``-a``, or stdin when no source is given.  Items are lines (or NUL-separated with
``-0``), as bytes: an item that is not UTF-8 (a file name in another encoding) is
carried as surrogate escapes, which the runner turns back into the exact bytes.
Several sources combine as their cartesian product (the first varies slowest), or with
``--link`` one item of each at a time, the shorter ones starting over.

The first source is read as it arrives, so the first job starts before stdin ends; the
others are read whole first (the product needs them all).
"""

from __future__ import annotations

import itertools
import os
from typing import IO, TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["PAUSE", "Source", "jobs"]

_CHUNK: Final = 1 << 16


class Source:
    """One input source: literal values, or a file (``-`` is stdin)."""

    def __init__(self, *, values: list[str] | None = None, path: str | None = None) -> None:
        self.values = values
        self.path = path

    def items(self, separator: bytes, stdin: IO[bytes]) -> Iterator[str | None]:
        """The source's items in order, each read as soon as it is whole (and ``PAUSE``
        where reading on may wait).

        Raises:
            OSError: the file cannot be read.
        """
        if self.values is not None:
            yield from self.values
            return
        assert self.path is not None
        if self.path == "-":
            yield from _split(stdin.fileno(), separator)
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield from _split(fd, separator)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<Source {self.values!r}>" if self.values is not None else f"<Source {self.path}>"


PAUSE: Final = None
"""Yielded by ``jobs`` where reading on may wait (the end of what a read returned): the
moment to hand the jobs so far to the runner, so that none waits on input to come."""


def _split(fd: int, separator: bytes) -> Iterator[str | None]:
    """Items of what fd holds, each decoded (surrogate escapes for non-UTF-8 bytes), and
    ``PAUSE`` after the items of each read."""
    os.set_blocking(fd, True)  # a parent may have left it non-blocking
    pending = b""
    while data := os.read(fd, _CHUNK):
        pending += data
        *whole, pending = pending.split(separator)
        for item in whole:
            yield _decode(item, separator)
        yield PAUSE
    if pending:
        yield _decode(pending, separator)


def _decode(item: bytes, separator: bytes) -> str:
    if separator == b"\n" and item.endswith(b"\r"):
        item = item[:-1]
    return item.decode("utf-8", "surrogateescape")


def jobs(
    sources: list[Source], *, separator: bytes, link: bool, stdin: IO[bytes]
) -> Iterator[tuple[str, ...] | None]:
    """Each job's arguments, one per source, in order; and ``PAUSE`` where reading the
    first source may wait."""
    if not sources:
        sources = [Source(path="-")]
    first, rest = sources[0], sources[1:]
    if not rest:
        for item in first.items(separator, stdin):
            yield PAUSE if item is None else (item,)
        return
    others = [_whole(source, separator, stdin) for source in rest]
    if link:
        lists = [_whole(first, separator, stdin), *others]
        longest = max(len(items) for items in lists)
        if any(not items for items in lists):
            return
        for index in range(longest):
            yield tuple(items[index % len(items)] for items in lists)
        return
    for item in first.items(separator, stdin):
        if item is None:
            yield PAUSE
            continue
        for combination in itertools.product(*others):
            yield (item, *combination)


def _whole(source: Source, separator: bytes, stdin: IO[bytes]) -> list[str]:
    return [item for item in source.items(separator, stdin) if item is not None]

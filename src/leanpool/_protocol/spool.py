"""The spool: a private task file the caller appends to and the runner reads as it grows.

The caller writes whole lines and then tells the runner how far the file holds them
(``more``/``end_input`` records); the runner reads the next task only when a slot frees,
and never past the offset it was told.  Neither side's memory grows with the number of
tasks.  A task file that is not a stream is read twice: ``iter_tasks`` validates all of
it first, then a ``SpoolReader`` runs it.  Standard library only: the lean runner
imports this module.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, BinaryIO, Final

from .._errors import LeanpoolError
from .records import encode_line
from .tasks import parse_line, parse_text_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .config import TaskFormat
    from .tasks import Task

__all__ = ["SPOOL_NAME", "SpoolReader", "SpoolWriter", "iter_tasks"]

SPOOL_NAME: Final = "tasks.jsonl"

_WRITE_BUFFER: Final = 1 << 16
"""Bytes the caller buffers before writing to the spool: large enough that add() rarely
makes a system call, small enough not to matter in a big caller's memory."""

_READ_CHUNK: Final = 1 << 16
"""Bytes the runner reads from the spool at a time: hundreds of tasks per read, and a
bound on the runner's memory for the tasks it has read but not started."""


def _parser(task_format: TaskFormat) -> Callable[[bytes, int], Task | None]:
    return parse_line if task_format == "jsonl" else parse_text_line


def iter_tasks(path: str, task_format: TaskFormat) -> Iterator[Task]:
    """Yield the tasks of a whole task file in order, skipping blank lines.

    Raises:
        TaskFileError: at the first invalid line, naming it.
        OSError: the file cannot be opened or read.
    """
    parse = _parser(task_format)
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            task = parse(raw, number)
            if task is not None:
                yield task


class SpoolReader:
    """Reads tasks from a spool, one at a time, never past what the caller announced.

    Invariants: ``_pos`` bytes of the file have been read; ``limit`` is the offset up to
    which the file is known to hold whole lines (``_pos <= limit``); ``_lines[_next:]``
    are the complete lines read and not yet parsed, and ``_tail`` the pieces of a line
    whose end is not yet read; ``consumed`` is where the lines parsed so far end.
    """

    def __init__(
        self,
        path: str,
        task_format: TaskFormat,
        parse: Callable[[bytes, int], Task | None] | None = None,
    ) -> None:
        """``parse``: a parser of this format's lines in place of the standard one (the
        runner's C path for the common line); it must read every line as it does."""
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._parse = parse or _parser(task_format)
        self.limit = 0
        self.ended = False
        """True once the caller said no line follows ``limit``."""
        self.line = 0
        """The number of the last line parsed."""
        self.last_raw = b""
        """The bytes of that line (a resume compares their digest with the journal's)."""
        self._pos = 0
        self.consumed = 0
        """The offset where the last line parsed ends (its newline included)."""
        self._lines: list[bytes] = []
        self._next = 0
        self._tail: list[bytes] = []

    def announce(self, offset: int, *, ended: bool = False) -> None:
        """The file holds whole lines up to offset (and, when ended, nothing after)."""
        if offset < self.limit:
            raise ValueError(f"spool offset went back from {self.limit} to {offset}")
        self.limit = offset
        self.ended = self.ended or ended

    def skip_to(self, offset: int, lines: int) -> None:
        """Go on from byte offset, the start of line ``lines + 1``: what comes before it
        was read some other way (a validation pass in C).  Only before the first read."""
        if self._pos or self._lines or self._tail:
            raise ValueError("skip_to is for a reader that has read nothing yet")
        self._pos = self.consumed = offset
        self.line = lines

    @property
    def drained(self) -> bool:
        """True when every line up to ``limit`` has been parsed."""
        return self._pos >= self.limit and self._next >= len(self._lines) and not self._tail

    def next_task(self) -> Task | None:
        """The next task up to ``limit``; None when there is none for now.

        Raises:
            TaskFileError: the next line is not a valid task, naming it.
        """
        while True:
            if self._next < len(self._lines):
                raw = self._lines[self._next]
                self._next += 1
                self.line += 1
                self.consumed += len(raw) + 1
                self.last_raw = raw
                task = self._parse(raw, self.line)
                if task is not None:
                    return task
                continue
            if not self._fill():
                return None

    def _fill(self) -> bool:
        """Read the next chunk into ``_lines``; False when nothing more is readable now."""
        want = min(_READ_CHUNK, self.limit - self._pos)
        data = os.pread(self._fd, want, self._pos) if want > 0 else b""
        self._pos += len(data)
        if not data:
            if self.ended and self._tail and self._pos >= self.limit:
                # A task file whose last line has no newline: that line is whole too.
                self._lines, self._next, self._tail = [b"".join(self._tail)], 0, []
                return True
            return False
        if b"\n" not in data:  # a piece of a long line: joined once, at its end
            self._tail.append(data)
            return True
        if self._tail:
            self._tail.append(data)
            data = b"".join(self._tail)
        lines = data.split(b"\n")
        last = lines.pop()
        self._tail = [last] if last else []
        self._lines, self._next = lines, 0
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SpoolWriter:
    """A private JSONL file (mode 0600) that add() appends task records to.

    ``offset`` is how far the file holds whole lines once ``flush()`` has run: the
    number to announce to the runner.
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, SPOOL_NAME)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file: BinaryIO | None = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        self.count = 0
        self.offset = 0

    def append(self, record: object) -> None:
        """Write one task record; raise LeanpoolError when the disk refuses it."""
        self.append_line(encode_line(record))

    def append_line(self, line: bytes) -> None:
        """Write one encoded task line, newline included."""
        if self._file is None:
            raise RuntimeError("the spool is already closed")
        try:
            self._file.write(line)
        except OSError as exc:
            raise LeanpoolError(f"cannot write the task spool {self.path}: {exc.strerror}") from exc
        self.offset += len(line)
        self.count += 1

    def flush(self) -> int:
        """Hand every line written so far to the file; return the offset they end at."""
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                raise LeanpoolError(
                    f"cannot write the task spool {self.path}: {exc.strerror}"
                ) from exc
        return self.offset

    def discard(self) -> None:
        """Close without caring whether the last buffer reached the disk."""
        spool, self._file = self._file, None
        if spool is not None:
            with contextlib.suppress(OSError):  # abandoned: the file goes with its directory
                spool.close()

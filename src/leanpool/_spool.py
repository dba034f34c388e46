"""The task file: written by the caller as tasks are added, streamed back by the runner.

The runner reads it twice, line by line: a validation pass that refuses the whole file at
its first bad line, and a run pass that reads the next task only when a slot frees, so
that neither side's memory grows with the number of tasks.  Standard library only: the
lean runner imports this module.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, BinaryIO, Final, Literal

from ._errors import LeanpoolError
from ._task import Task, parse_line, parse_text_line
from ._wire import encode_line

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["SPOOL_NAME", "SpoolWriter", "TaskFormat", "iter_tasks"]

TaskFormat = Literal["jsonl", "lines"]

SPOOL_NAME: Final = "tasks.jsonl"

_WRITE_BUFFER: Final = 1 << 16
"""Bytes the caller buffers before writing to the spool: large enough that add() rarely
makes a system call, small enough not to matter in a big caller's memory."""


def iter_tasks(path: str, task_format: TaskFormat) -> Iterator[Task]:
    """Yield the tasks of a task file in order, skipping blank lines.

    Raises:
        TaskFileError: at the first invalid line, naming it.
        OSError: the file cannot be opened or read.
    """
    parse = parse_line if task_format == "jsonl" else parse_text_line
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            task = parse(raw, number)
            if task is not None:
                yield task


class SpoolWriter:
    """A private JSONL file (mode 0600) that add() appends task records to."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, SPOOL_NAME)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file: BinaryIO | None = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        self.count = 0

    def append(self, record: dict[str, object]) -> None:
        """Write one task record; raise LeanpoolError when the disk refuses it."""
        if self._file is None:
            raise RuntimeError("the spool is already closed")
        try:
            self._file.write(encode_line(record))
        except OSError as exc:
            raise LeanpoolError(f"cannot write the task spool {self.path}: {exc.strerror}") from exc
        self.count += 1

    def finish(self) -> None:
        """Flush and close, so the runner reads every task; raise LeanpoolError on failure."""
        spool, self._file = self._file, None
        if spool is None:
            return
        try:
            spool.close()
        except OSError as exc:
            raise LeanpoolError(f"cannot write the task spool {self.path}: {exc.strerror}") from exc

    def discard(self) -> None:
        """Close without caring whether the last buffer reached the disk."""
        spool, self._file = self._file, None
        if spool is not None:
            with contextlib.suppress(OSError):  # abandoned: the file goes with its directory
                spool.close()

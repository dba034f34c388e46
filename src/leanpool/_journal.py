"""The journal: one durable JSONL record per finished task, and resuming from it.

The runner, not the caller, writes the journal, as soon as a task ends and before the
result is sent on: a result survives the caller being killed.  Each record is one
``write`` to a file opened with O_APPEND; ``fsync`` runs at most once per
``JOURNAL_SYNC_S`` and at the end, so a result survives any process death at once and a
power loss after at most that long.  Standard library only: the lean runner imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Final

from ._errors import JournalError

__all__ = ["JOURNAL_SYNC_S", "Journal", "read_journal_ids"]

JOURNAL_SYNC_S: Final = 1.0
"""Most seconds between fsyncs of the journal: shorter loses less on a power cut, longer
keeps a disk flush off the per-task path of fast tasks."""


def read_journal_ids(path: str) -> set[str | int]:
    """The task ids the journal holds, after cutting off a torn last line.

    A last line without its newline is what a writer killed mid-record leaves: it is
    removed from the file (that task runs again).  Anything else that is not a record,
    or two records for one id, is corruption, and resume refuses to guess.

    Raises:
        JournalError: the journal is not readable or not trustworthy.
    """
    ids: set[str | int] = set()
    try:
        journal = open(path, "r+b")  # noqa: SIM115 - closed below, after a possible truncate
    except FileNotFoundError:
        return ids
    except OSError as exc:
        raise JournalError(f"cannot open journal {path}: {exc.strerror}") from exc
    with journal:
        good_size = 0
        for number, raw in enumerate(journal, 1):
            if not raw.endswith(b"\n"):
                journal.truncate(good_size)  # torn by a dying writer
                break
            try:
                record = json.loads(raw)
                task_id = record["id"]
            except (ValueError, TypeError, KeyError, RecursionError):
                raise JournalError(
                    f"journal {path} line {number} is not a result record; "
                    "refusing to guess which tasks finished"
                ) from None
            if isinstance(task_id, bool) or not isinstance(task_id, (str, int)):
                raise JournalError(f"journal {path} line {number} has an invalid id")
            if task_id in ids:
                raise JournalError(
                    f"journal {path} line {number} repeats id {task_id!r}; "
                    "refusing to guess which record is right"
                )
            ids.add(task_id)
            good_size += len(raw)
    return ids


class Journal:
    """Appends result lines durably; a failed write leaves the file as it was."""

    def __init__(self, path: str, *, resume: bool) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise JournalError(f"cannot open journal {path}: {exc.strerror}") from exc
        if self._size and not resume:
            os.close(self._fd)
            raise JournalError(
                f"journal {path} already holds results; resume to skip the tasks it "
                "records, or remove it to start over"
            )
        self._synced_at = time.monotonic()
        self._dirty = False

    def append(self, line: bytes) -> None:
        """Write one record, all of it or none of it.

        Raises:
            JournalError: the write failed (disk full, ...); the journal keeps every
                record written before this one.
        """
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):  # /dev/full and friends keep nothing anyway
                os.ftruncate(self._fd, self._size)
            raise JournalError(f"cannot write journal {self.path}: {exc.strerror}") from exc
        self._size += len(line)
        self._dirty = True
        if time.monotonic() - self._synced_at >= JOURNAL_SYNC_S:
            self.sync()

    def sync(self) -> None:
        """fsync if anything was written since the last one."""
        if self._dirty:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise JournalError(f"cannot sync journal {self.path}: {exc.strerror}") from exc
            self._dirty = False
        self._synced_at = time.monotonic()

    def close(self) -> None:
        """Sync and close; safe to call twice."""
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1

"""The journal: one durable JSONL record per finished task, and resuming from it.

The runner, not the caller, writes the journal, as soon as a task ends and before the
result is sent on: a result survives the caller being killed.  Each record is one
``write`` to a file opened with O_APPEND; ``fsync`` runs at most once per
``JOURNAL_SYNC_S`` and at the end, so a result survives any process death at once and a
power loss after at most that long.  A run holds an exclusive ``flock`` on the journal,
so two runs can never interleave records in one file.  Standard library only: the lean
runner imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from typing import Final

from .._errors import JournalError

__all__ = ["JOURNAL_LOCK_WAIT_S", "JOURNAL_SYNC_S", "Journal"]

JOURNAL_SYNC_S: Final = 1.0
"""Most seconds between fsyncs of the journal: shorter loses less on a power cut, longer
keeps a disk flush off the per-task path of fast tasks."""

JOURNAL_LOCK_WAIT_S: Final = 3.0
"""Seconds to wait for another run to release the journal: long enough for a run that is
being stopped to finish doing so, short enough to report a real conflict promptly."""


class Journal:
    """An open, locked journal: the ids it already holds, and appending new records.

    Each record is a result record plus ``task``: a digest of the task's line, so that
    a resume can tell a task whose line changed (a ``--lines`` file edited between runs)
    from the one recorded, and refuse to skip it.

    Args:
        path: the journal file; created if missing.
        resume: read the ids already recorded (``done``: id to its task digest, or
            "" for a record without one; ``failed``: those whose last record failed);
            without it, a journal that already holds records is refused rather than
            appended to or overwritten.

    Raises:
        JournalError: the journal cannot be opened or locked, is not trustworthy, or
            holds records while ``resume`` is false.
    """

    def __init__(self, path: str, *, resume: bool) -> None:
        self.path = path
        self.done: dict[str | int, str] = {}
        self.failed: set[str | int] = set()
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open journal {path}: {exc.strerror}") from exc
        try:
            self._lock()
            if resume:
                self._read_ids()
            self._size = os.fstat(self._fd).st_size
            if self._size and not resume:
                raise JournalError(
                    f"journal {path} already holds results; resume to skip the tasks it "
                    "records, or remove it to start over"
                )
        except BaseException:
            os.close(self._fd)
            raise
        self._synced_at = time.monotonic()
        self._dirty = False

    def _lock(self) -> None:
        deadline = time.monotonic() + JOURNAL_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise JournalError(f"journal {self.path} is in use by another run") from None
                time.sleep(0.05)  # once per run, only while another run holds the lock
            except OSError:
                return  # a file that cannot be locked (/dev/full, some network mounts)

    def _read_ids(self) -> None:
        """Read the task ids recorded into ``done`` and ``failed``, after cutting off a
        torn last line.

        A last line without its newline is what a writer killed mid-record leaves: it is
        removed from the file (that task runs again).  Anything else that is not a
        record is corruption, and so is a second record for an id whose first one
        succeeded: resume refuses to guess.  (A failed task run again by a resume that
        reruns failures has a later record, which counts.)
        """
        ids = self.done
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            return  # a device (/dev/full reads as endless zeros) has no records to skip
        good_size = 0
        with open(self._fd, "rb", closefd=False) as journal:
            for number, raw in enumerate(journal, 1):
                if not raw.endswith(b"\n"):
                    os.ftruncate(self._fd, good_size)  # torn by a dying writer
                    break
                try:
                    record = json.loads(raw)
                    task_id = record["id"]
                    ok = record.get("ok", True) is True
                    digest = record.get("task", "")
                except (ValueError, TypeError, KeyError, RecursionError, AttributeError):
                    raise JournalError(
                        f"journal {self.path} line {number} is not a result record; "
                        "refusing to guess which tasks finished"
                    ) from None
                if isinstance(task_id, bool) or not isinstance(task_id, (str, int)):
                    raise JournalError(f"journal {self.path} line {number} has an invalid id")
                if task_id in ids and task_id not in self.failed:
                    raise JournalError(
                        f"journal {self.path} line {number} repeats id {task_id!r}; "
                        "refusing to guess which record is right"
                    )
                ids[task_id] = digest if isinstance(digest, str) else ""
                if ok:
                    self.failed.discard(task_id)
                else:
                    self.failed.add(task_id)
                good_size += len(raw)

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
        """Sync and close (which releases the lock); safe to call twice."""
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1

"""What comes in: the caller's control records, and the tasks of the spool as it grows.

The runner's stdin is the caller's channel: ``more`` and ``end_input`` records say how far
the spool holds whole tasks, ``cancel`` names a task to cancel, ``halt`` starts no more
tasks (running ones finish), ``stop`` stops the run, and EOF says the caller is gone.
Tasks are read one at a time, only when a slot is free, so the runner holds no more of
the input than the tasks it runs.  Tasks whose id the journal already holds are skipped
here; with a journal, an id seen twice is a bad line (a result could not be matched to
its task).
"""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING

from .._errors import TaskFileError
from .._protocol.spool import SpoolReader
from .._protocol.tasks import task_digest

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._protocol.config import InputConfig
    from .._protocol.journal import Journal
    from .._protocol.tasks import Task

__all__ = ["ControlError", "Intake"]


class ControlError(Exception):
    """The caller wrote something on the control channel that is not a control record."""


class Intake:
    """The input side of a run.

    Invariants: ``tasks`` counts the tasks read (``skipped`` of them already in the
    journal, never started; ``skipped_failed`` of those, recorded there as failed);
    every other task read got the next ``seq``, from 0.  For a task file validated
    whole, these counts are the file's totals from the start.  ``caller_gone`` becomes
    true at EOF on stdin, unless the caller asked to stop first (``stop_asked``: it
    lives on), and stays so.

    With a journal, every task read gets its ``digest``; a task the journal holds is
    skipped only if its line is the one recorded (else the resume is refused), and,
    with ``rerun_failed``, only if it succeeded.
    """

    def __init__(
        self,
        config: InputConfig,
        journal: Journal | None,
        *,
        rerun_failed: bool = False,
        parse: Callable[[bytes, int], Task | None] | None = None,
        check: Callable[[bytes, int], Task | None] | None = None,
        check_file: Callable[[int, int], tuple[int, int, int]] | None = None,
    ) -> None:
        """``parse``: the line parser the readers use (``SpoolReader``), if not the
        standard one of the input's format; ``check``: the one the validation pass of a
        task file uses when no journal is kept (its tasks are only counted);
        ``check_file(fd, size) -> (offset, lines, tasks)``: that pass over as much of the
        file as it can take at once, before ``check`` goes on from there."""
        self.stream = config["stream"]
        self._path = config["path"]
        self._format = config["format"]
        self._parse = parse
        self._check = check if journal is None else parse
        self._check_file = check_file if journal is None else None
        self._reader = SpoolReader(self._path, self._format, parse)
        self._journal = journal
        self._done: dict[str | int, str] = {} if journal is None else journal.done
        self._failed: set[str | int] = set() if journal is None else journal.failed
        self._rerun_failed = rerun_failed
        self._unique = journal is not None
        self._first_line: dict[str | int, int] = {}
        self._control = b""
        self._validated = False
        self.tasks = 0
        self.skipped = 0
        self.skipped_failed = 0
        self.next_seq = 0
        self.caller_gone = False
        self.stop_asked = False
        self.halt_asked = False
        """The caller said ``halt``: start nothing more, let running tasks finish."""
        self.closed = False
        self.cancels: list[tuple[str | int, int | None]] = []
        """(id, before) of the tasks the caller cancelled, not yet acted on by the loop."""

    # -- a whole task file -----------------------------------------------------------------

    def validate(self) -> None:
        """The first pass over a task file: refuse all of it at its first bad line.

        Counts its tasks and those the journal holds, and fixes the end of input at the
        size it had, so that the run pass reads exactly what was validated.

        Raises:
            TaskFileError: naming the first bad line; no task has started.
        """
        checked = None
        with open(self._path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise TaskFileError(0, f"{self._path} is not a regular file")
            size = os.fstat(f.fileno()).st_size
            if self._check_file is not None:
                checked = self._check_file(f.fileno(), size)
        reader = SpoolReader(self._path, self._format, self._check)
        try:
            reader.announce(size, ended=True)
            if checked is not None:
                offset, lines, self.tasks = checked
                reader.skip_to(offset, lines)
            journaled = self._journal is not None  # else no id is checked, none skipped
            while (task := reader.next_task()) is not None:
                self.tasks += 1
                if journaled:
                    self._check_unique(task)
                    if self._skip(task, reader.last_raw):
                        self.skipped += 1
        finally:
            reader.close()
        self._first_line.clear()
        self._validated = True
        self._reader.announce(size, ended=True)

    # -- the control channel ---------------------------------------------------------------

    def on_control(self) -> None:
        """Read what the caller wrote on stdin and act on each whole record.

        Raises:
            ControlError: a line is not a control record, or moves the offset back.
        """
        try:
            data = os.read(0, 1 << 16)
        except OSError:
            data = b""
        self.take_control(data)

    def take_control(self, data: bytes) -> None:
        """Act on the control bytes read from stdin; ``b""`` is its EOF.  (The cluster
        driver reads stdin in a thread of its own and hands the bytes over here.)

        Raises:
            ControlError: a line is not a control record, or moves the offset back.
        """
        if not data:
            self.caller_gone = not self.stop_asked
            self.closed = True
            return
        lines = (self._control + data).split(b"\n")
        self._control = lines.pop()
        for line in lines:
            self._apply(line)

    def _apply(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            kind = record["leanpool"]
            if kind == "stop":
                self.stop_asked = True
                return
            if kind == "halt":
                self.halt_asked = True
                return
            if kind == "cancel":
                task_id = record["id"]
                if isinstance(task_id, bool) or not isinstance(task_id, (str, int)):
                    raise TypeError
                before = record.get("before")
                if before is not None and type(before) is not int:
                    raise TypeError
                self.cancels.append((task_id, before))
                return
            offset = record["offset"]
        except (ValueError, TypeError, KeyError):
            raise ControlError(f"not a control record: {line[:200]!r}") from None
        if kind not in ("more", "end_input") or type(offset) is not int:
            raise ControlError(f"not a control record: {line[:200]!r}")
        if self._validated:
            raise ControlError("a task file validated whole takes no more input")
        try:
            self._reader.announce(offset, ended=kind == "end_input")
        except ValueError as exc:
            raise ControlError(str(exc)) from None

    # -- tasks -----------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """How far the caller said the spool holds tasks."""
        return self._reader.limit

    @property
    def exhausted(self) -> bool:
        """No task will ever come again: input ended and all of it was read."""
        return self._reader.ended and self._reader.drained

    @property
    def consumed(self) -> int:
        """The spool offset where the line of the task read last ends (a cancel with a
        ``before`` at or past it can no longer meet its task among those to read)."""
        return self._reader.consumed

    @property
    def caught_up(self) -> bool:
        """Every task announced so far has been read."""
        return self._reader.drained

    def next_task(self) -> tuple[Task, int] | None:
        """The next task to run and its seq; None when none is readable now.

        Raises:
            TaskFileError: the next line is bad (only a stream can get here with one).
        """
        while True:
            task = self._reader.next_task()
            if task is None:
                return None
            if not self._validated:
                self._check_unique(task)
                self.tasks += 1
            if self._journal is not None and self._skip(task, self._reader.last_raw):
                if not self._validated:
                    self.skipped += 1
                continue
            seq = self.next_seq
            self.next_seq += 1
            return task, seq

    def _skip(self, task: Task, raw: bytes) -> bool:
        """With a journal: whether the task is done already (give it its digest too).

        Raises:
            TaskFileError: the journal holds a result for this id, of another task.
        """
        digest = task.digest = task_digest(raw)
        recorded = self._done.get(task.id)
        if recorded is None:
            return False
        if recorded and recorded != digest:
            raise TaskFileError(
                task.line,
                f"the journal holds a result for id {task.id!r}, but of another task (its "
                "line changed since): refusing to resume; remove the journal to start over",
            )
        if task.id in self._failed:
            if self._rerun_failed:
                return False
            if not self._validated:
                self.skipped_failed += 1
        return True

    def _check_unique(self, task: Task) -> None:
        if not self._unique:
            return
        seen = self._first_line.setdefault(task.id, task.line)
        if seen != task.line:
            raise TaskFileError(
                task.line,
                f"id {task.id!r} was already used on line {seen}; "
                "ids must be unique when a journal is kept",
            )

    @property
    def last_raw(self) -> bytes:
        """The bytes of the line of the task ``next_task`` returned last."""
        return self._reader.last_raw

    def close(self) -> None:
        self._reader.close()

"""The exception tree.

::

    LeanpoolError
     ├─ TaskFileError      a task line is invalid (carries the line number); nothing ran
     ├─ JournalError       the journal cannot be read, trusted or written
     ├─ TaskFailed         raised by Result.check() (and by an Executor's futures)
     └─ RunnerError        the runner broke its contract; tasks not yet reported are lost
         ├─ RunnerCrashed  the runner exited before its end record; carries returncode and stderr
         └─ ProtocolError  the runner wrote a line the caller cannot decode; carries the line

A task's failure is data (a ``Result`` with ``ok=False``); only the runner's failure, or
input that cannot be run at all, is an exception.  This module is imported by the lean
runner too, so it uses nothing but the standard library.
"""

from __future__ import annotations

import signal

__all__ = [
    "JournalError",
    "LeanpoolError",
    "ProtocolError",
    "RemoteTraceback",
    "RunnerCrashed",
    "RunnerError",
    "TaskFailed",
    "TaskFileError",
]


class LeanpoolError(Exception):
    """Base class of every error leanpool raises on purpose."""


class TaskFileError(LeanpoolError):
    """A task line is invalid; the run was refused before any task started.

    Attributes:
        line: 1-based line number in the task file (0 when the problem is not one line).
        reason: what is wrong with that line.
    """

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(line, reason)

    def __str__(self) -> str:
        if self.line:
            return f"invalid task on line {self.line}: {self.reason}"
        return f"invalid task file: {self.reason}"


class JournalError(LeanpoolError):
    """The journal cannot be read back with confidence, or writing to it failed."""


class TaskFailed(LeanpoolError):
    """Raised by ``Result.check()`` for a task that did not succeed."""

    def __init__(self, task_id: str | int, status: int, reason: str) -> None:
        self.task_id = task_id
        self.status = status
        self.reason = reason
        super().__init__(task_id, status, reason)

    def __str__(self) -> str:
        return f"task {self.task_id!r} failed: {self.reason}"


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text: set as the ``__cause__``
    of the exception the caller sees, so that both tracebacks print."""

    def __init__(self, traceback: str) -> None:
        self.traceback = traceback
        super().__init__(traceback)

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback.rstrip()}\n"""'


class RunnerError(LeanpoolError):
    """The runner process broke its contract: results not yet delivered are lost.

    Attributes:
        completed: how many results the caller had received when it happened.
    """

    fatal_kind: str | None = None
    """The runner's fatal error kind (``worker``, ``runner``, ...) when it said one."""

    def __init__(self, message: str, *, completed: int = 0) -> None:
        self.message = message
        self.completed = completed
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} ({self.completed} task(s) had finished)"


class ClusterError(RunnerError):
    """A run on a Dask cluster could not go on: the scheduler did not answer or went
    away, or a worker cannot run leanpool's batches (leanpool missing there, or of
    another protocol version).  The journal holds every result received before it."""


def describe_exit(returncode: int) -> str:
    """Say how a process ended, naming the signal for a negative code as subprocess does."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"unknown signal {-returncode}"
    return f"status {returncode}"


class RunnerCrashed(RunnerError):
    """The runner exited, or its output ended, without the end-of-run record.

    Attributes:
        returncode: the runner's exit code (negative: killed by that signal), or None.
        stderr: the last part of what the runner wrote to its stderr.
    """

    def __init__(self, returncode: int | None, stderr: str, *, completed: int = 0) -> None:
        self.returncode = returncode
        self.stderr = stderr
        how = (
            "ended its output" if returncode is None else f"exited with {describe_exit(returncode)}"
        )
        message = f"leanpool runner {how} before finishing"
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        if tail:
            message += f": {tail[0]}"
        super().__init__(message, completed=completed)


class ProtocolError(RunnerError):
    """The runner wrote a line that is not a record of the protocol."""

    def __init__(self, line: bytes, reason: str, *, completed: int = 0) -> None:
        self.line = line
        super().__init__(
            f"leanpool runner broke the protocol ({reason}): {line[:200]!r}", completed=completed
        )

"""What a finished task gives back to the caller: the ``Result`` value type."""

from __future__ import annotations

import binascii
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, final

from .._errors import RemoteTraceback, TaskFailed
from .calls import unpickle_value

if TYPE_CHECKING:
    from .._protocol.calls import CallError
    from .._protocol.records import ResultRecord

__all__ = ["Result", "RunSummary", "plain_result", "result_from_record"]


@final
@dataclass(frozen=True, slots=True)
class Result:
    """One finished task, with the same field names as its JSON record.

    Attributes:
        id: the task's id, as given to ``add()`` or in the task file.
        status: the exit code; minus the signal number when a signal ended the task
            (as ``subprocess`` returncode); 127 or 126 when it could not start.
        stdout, stderr: the output as text; exact when it is UTF-8, else with U+FFFD in
            place of bad bytes (``stdout_bytes`` and ``stderr_bytes`` are always exact).
        ok: True when the task exited 0 without timing out.
        duration: wall-clock seconds from start to finish of the last attempt.
        timed_out: the task outlived its timeout and was killed.
        signal: the name of the signal that ended the task, if one did.
        attempts: how many times it ran (more than 1 with retries).
        error: why the task could not start (a string), or, for a call that raised or
            whose worker died, ``{"type", "message", "traceback"}`` (the traceback as the
            worker printed it).
        value: a call's return value (None for a command, or a failed call).
        cancelled: the task was cancelled (``Executor`` futures, ``cancel``).
        stdout_truncated, stderr_truncated: output beyond ``max_output`` was dropped.
        stdout_file, stderr_file: where the output went, with ``output_dir``.
        stdout_b64, stderr_b64, stdout_raw, stderr_raw: how the exact bytes arrived (base64
            in the JSON, or a spill file); read them through ``stdout_bytes`` and
            ``stderr_bytes``.
    """

    id: str | int
    status: int
    stdout: str
    stderr: str
    ok: bool
    duration: float
    timed_out: bool = False
    signal: str | None = None
    attempts: int = 1
    error: str | CallError | None = None
    value: Any = None
    cancelled: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_file: str | None = None
    stderr_file: str | None = None
    stdout_b64: str | None = field(default=None, repr=False)
    stderr_b64: str | None = field(default=None, repr=False)
    stdout_raw: bytes | None = field(default=None, repr=False, compare=False)
    stderr_raw: bytes | None = field(default=None, repr=False, compare=False)
    exception_pickle: str | None = field(default=None, repr=False, compare=False)

    @property
    def stdout_bytes(self) -> bytes:
        """The task's stdout exactly as it wrote it."""
        return _exact(self.stdout, self.stdout_b64, self.stdout_raw)

    @property
    def stderr_bytes(self) -> bytes:
        """The task's stderr exactly as it wrote it."""
        return _exact(self.stderr, self.stderr_b64, self.stderr_raw)

    def check(self) -> Result:
        """Return self if the task succeeded, else raise TaskFailed.

        Raises:
            TaskFailed: the task exited non-zero, was killed, timed out or did not start;
                for a call that raised, with the worker's traceback as its cause.
        """
        if self.ok:
            return self
        if isinstance(self.error, dict):
            failure = TaskFailed(
                self.id, self.status, f"{self.error['type']}: {self.error['message']}"
            )
            if self.error["traceback"]:
                raise failure from RemoteTraceback(self.error["traceback"])
            raise failure
        if self.cancelled:
            reason = "cancelled"
        elif self.error is not None:
            reason = self.error
        elif self.timed_out:
            reason = f"timed out (ended by {self.signal or 'exit'})"
        elif self.signal is not None:
            reason = f"killed by {self.signal}"
        else:
            reason = f"exit status {self.status}"
        raise TaskFailed(self.id, self.status, reason)


def _exact(text: str, b64: str | None, raw: bytes | None) -> bytes:
    if raw is not None:
        return raw
    if b64 is not None:
        return binascii.a2b_base64(b64)
    return text.encode("utf-8")


@final
@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run ended, from the runner's end record.

    Attributes:
        total: tasks in the task file.
        skipped: tasks skipped because the journal already had their result (resume).
        completed: results delivered by this run.
        failed: of those, how many were not ok.
        unfinished: tasks of this run with no result: never started, or killed by a halt
            or an interrupt (a resumed run starts them again).
        halted: the run stopped early because of ``halt``.
        skipped_failed: of the tasks skipped, those the journal holds as failed
            (``resume_failed`` runs them again instead).
    """

    total: int
    skipped: int
    completed: int
    failed: int
    unfinished: int
    halted: bool
    skipped_failed: int = 0


class _ResultLayout:
    """Result's memory layout without its frozen ``__setattr__``, for ``plain_result``."""

    __slots__ = Result.__slots__


def plain_result(
    id: str | int, status: int, stdout: str, stderr: str, ok: bool, duration: float
) -> Result:
    """``Result(id, status, stdout, stderr, ok, duration)``, built in a fifth of its time.

    The frozen dataclass's ``__init__`` stores each of its 21 fields through
    ``object.__setattr__``, which costs more than decoding the record the fields come
    from; nearly every result takes this path.  Here each field is one plain slot store
    on a ``_ResultLayout``, which then becomes a Result: ``__class__`` may change
    between two classes of the same slots, and what is left is a Result in every way
    (its type, its fields, equality, hash, repr, pickling).  The defaults are
    Result's own; a unit test checks that both ways give the same Result, field by
    field.
    """
    r: Any = _new_object(_ResultLayout)
    r.id = id
    r.status = status
    r.stdout = stdout
    r.stderr = stderr
    r.ok = ok
    r.duration = duration
    r.timed_out = False
    r.signal = None
    r.attempts = 1
    r.error = None
    r.value = None
    r.cancelled = False
    r.stdout_truncated = False
    r.stderr_truncated = False
    r.stdout_file = None
    r.stderr_file = None
    r.stdout_b64 = None
    r.stderr_b64 = None
    r.stdout_raw = None
    r.stderr_raw = None
    r.exception_pickle = None
    r.__class__ = Result
    result: Result = r
    return result


_new_object: Final = object.__new__


def result_from_record(record: ResultRecord) -> Result:
    """Build the Result of one result record (checked by the RecordReader).

    Raises:
        ValueError: a field has the wrong type, or a spilled output cannot be read.
    """
    if len(record) == 6:  # the common result: only the fields every result has
        stdout, stderr = record["stdout"], record["stderr"]
        if type(stdout) is str and type(stderr) is str:
            return plain_result(
                record["id"], record["status"], stdout, stderr, record["ok"], record["duration"]
            )
    spills: list[str] = []
    """Files that carried this result: removed once it is known good, not before (a
    record that turns out bad must not have made us remove anything)."""
    try:
        stdout, stdout_raw = _output(record, "stdout", spills)
        stderr, stderr_raw = _output(record, "stderr", spills)
        ok = record["ok"]
        error = record.get("error")
        value = record.get("value")
        if "value_pickle" in record or "value_spill" in record:
            value_spill = record.get("value_spill")
            if value_spill is not None:
                if not isinstance(value_spill, str):
                    raise TypeError("value_spill")
                spills.append(value_spill)
            try:
                value = unpickle_value(record.get("value_pickle"), value_spill)
            except OSError:
                raise
            except Exception as exc:  # a value this caller cannot rebuild
                ok = False
                value = None
                error = {
                    "type": type(exc).__name__,
                    "message": f"the return value cannot be unpickled here: {exc}",
                    "traceback": "",
                }
        result = Result(
            id=record["id"],
            status=record["status"],
            stdout=stdout,
            stderr=stderr,
            ok=ok,
            duration=record["duration"],
            timed_out=record.get("timed_out", False),
            signal=record.get("signal"),
            attempts=record.get("attempts", 1),
            error=error,
            value=value,
            cancelled=record.get("cancelled", False),
            exception_pickle=record.get("exception_pickle"),
            stdout_truncated=record.get("stdout_truncated", False),
            stderr_truncated=record.get("stderr_truncated", False),
            stdout_file=record.get("stdout_file"),
            stderr_file=record.get("stderr_file"),
            stdout_b64=record.get("stdout_b64"),
            stderr_b64=record.get("stderr_b64"),
            stdout_raw=stdout_raw,
            stderr_raw=stderr_raw,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a result record: missing or bad {exc}") from None
    except OSError as exc:
        raise ValueError(f"its spilled output cannot be read: {exc}") from None
    for spill in spills:  # each carried this one result, which is whole now
        try:
            os.unlink(spill)
        except OSError as exc:
            raise ValueError(f"its spill file cannot be removed: {exc}") from None
    return result


def _output(record: ResultRecord, name: str, spills: list[str]) -> tuple[str, bytes | None]:
    """A stream's text, and its exact bytes when the runner spilled it to a file (whose
    path goes to spills: it exists only to carry this one result)."""
    fields: dict[str, object] = record  # type: ignore[assignment]  # read by name
    spill = fields.get(name + "_spill")
    if spill is None:
        text = fields[name]
        if not isinstance(text, str):
            raise TypeError(name)
        return text, None
    if not isinstance(spill, str):
        raise TypeError(name + "_spill")
    with open(spill, "rb") as f:
        data = f.read()
    spills.append(spill)
    return data.decode("utf-8", "replace"), data

"""The records of the caller-runner protocol: their typed shapes, the version, encoding.

``docs/protocol.md`` is the written form of this module.  Both directions are JSON lines.

Runner to caller (its stdout)::

    {"leanpool": "start", "protocol": 4, ...}      once, when the runner is ready
    {"id": ..., "status": ..., "ok": ..., ...}      one per finished task
    {"leanpool": "skipped", "protocol": 4, ...}     tasks the journal already held, so far
    {"leanpool": "idle", "protocol": 4, ...}        every task announced so far is done
    {"leanpool": "end", "protocol": 4, ...}         last line of a run that ended
    {"leanpool": "fatal", "protocol": 4, ...}       last line of a run that was refused

Caller to runner (its stdin)::

    {"leanpool": "more", "offset": N}               the spool holds whole tasks up to byte N
    {"leanpool": "end_input", "offset": N}          and no task will follow byte N
    {"leanpool": "stop"}                            stop the run; I am still here
    {"leanpool": "cancel", "id": ...}               cancel one task: kill it, or never start it
    {"leanpool": "halt"}                            start no more tasks; running ones finish

A control record is the only kind with a ``"leanpool"`` key.  A stream from the runner
that ends without an ``end`` or ``fatal`` record was cut short: the runner died.

The TypedDicts name every field a record may have, so that the code that builds a record
and the code that reads one agree under mypy; at run time they are plain dicts, which
costs the runner nothing per task.  Standard library only: the lean runner imports this.
"""

from __future__ import annotations

import binascii
import json
from typing import TYPE_CHECKING, Final, Literal, TypedDict

if TYPE_CHECKING:
    from .calls import CallError

__all__ = [
    "PROTOCOL_VERSION",
    "RUN_TOKEN_ENV",
    "SPILL_OVER",
    "CancelRecord",
    "EndInputRecord",
    "EndRecord",
    "FatalKind",
    "FatalRecord",
    "HaltRecord",
    "IdleRecord",
    "MoreRecord",
    "ResultRecord",
    "SkippedRecord",
    "StartRecord",
    "StopRecord",
    "decode_output",
    "encode_line",
]

SPILL_OVER: Final = 1 << 16
"""Bytes from which data crosses between the processes as a raw file named in a record
rather than inside its JSON line: a task's output (the runner), a call's return value
(the worker) and a call's pickled arguments (the caller).  Escaping and parsing
megabytes of JSON costs ten times what a file write and read do, and data this small
costs less inline than a file's create, write, read and unlink."""

PROTOCOL_VERSION: Final = 4
"""Bumped on any change a reader of version N could misread; new optional result fields
do not bump it (readers ignore fields they do not know).  Version 2 added streaming
input (``more``/``end_input``, ``idle``) and task kinds; version 3 the ``call`` kind,
its workers (the ``workers`` config key, a ``worker`` fatal error) and ``cancel``;
version 4 the ``halt`` control record, the ``cluster`` config key (a run on a Dask
cluster, through the cluster driver) and the ``cluster`` fatal error."""

RUN_TOKEN_ENV: Final = "LEANPOOL_RUN"
"""Environment variable that marks every process of one run (tasks and their descendants).

The caller sets it in the runner's environment, and every task inherits it.  If the
runner dies without killing its tasks (SIGKILL, a crash), the caller finds them by this
mark in ``/proc/PID/environ``: it costs nothing per task, and it also catches
grandchildren that left their task's process group."""


# -- runner to caller ----------------------------------------------------------------------


class StartRecord(TypedDict, total=False):
    """Once, first: the runner is ready.  ``total`` and ``skipped`` are there only when the
    whole input was validated before the run began (a task file, not a stream)."""

    leanpool: Literal["start"]
    protocol: int
    total: int
    skipped: int
    engine: Literal["c", "python"]
    """How the lean runner starts and drains commands: its C engine, or Python (not
    built, or ``LEANPOOL_PURE_PYTHON``).  Informative: both keep every guarantee."""


class _ResultRequired(TypedDict):
    id: str | int
    status: int
    ok: bool
    duration: float
    stdout: str
    stderr: str


class ResultRecord(_ResultRequired, total=False):
    """One finished task.  The optional fields appear only when they say something.

    ``error`` is a string for a task that could not start, an object (``CallError``)
    for a call that raised or whose worker died.  A call's return value is ``value``
    (JSON, from a task file), ``value_pickle`` (base64) or ``value_spill`` (a file of
    the pickle's bytes, read and removed by the caller).
    """

    timed_out: bool
    signal: str
    attempts: int
    error: str | CallError
    cancelled: bool
    task: str
    value: object
    value_pickle: str
    value_spill: str
    exception_pickle: str
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_b64: str
    stderr_b64: str
    stdout_file: str
    stderr_file: str
    stdout_spill: str
    stderr_spill: str


class SkippedRecord(TypedDict):
    """How many tasks read so far the journal already held (resume): they will have no
    result.  Sent, cumulative, when the count changed; only for streamed input (a task
    file's count is in ``start``)."""

    leanpool: Literal["skipped"]
    protocol: int
    skipped: int


class IdleRecord(TypedDict):
    """Every task up to ``offset`` of the spool has its result (or was skipped), and
    nothing runs: the caller may now say that input has ended."""

    leanpool: Literal["idle"]
    protocol: int
    offset: int


class EndRecord(TypedDict):
    """The run ended; the last line.

    ``tasks`` counts the tasks the runner read, ``skipped`` those of them the journal
    already held (``skipped_failed`` of those as failures: a resume's exit status counts
    them); ``unfinished`` those it read that got no result (never started, or killed by
    a halt or a stop).  ``stopped_by`` is null, a signal name, or ``"caller"``.
    """

    leanpool: Literal["end"]
    protocol: int
    tasks: int
    skipped: int
    completed: int
    failed: int
    unfinished: int
    skipped_failed: int
    halted: bool
    interrupted: bool
    stopped_by: str | None


FatalKind = Literal["task_file", "journal", "protocol", "runner", "worker", "cluster"]


class _FatalRequired(TypedDict):
    leanpool: Literal["fatal"]
    protocol: int
    error: FatalKind
    message: str


class FatalRecord(_FatalRequired, total=False):
    """The run was refused, or a streamed task line was bad; the last line.

    A ``task_file`` error carries ``line`` and ``reason``.  After a bad streamed line the
    results of the tasks that ran before it come first.
    """

    line: int
    reason: str


# -- caller to runner ----------------------------------------------------------------------


class MoreRecord(TypedDict):
    """The spool holds whole task lines up to byte ``offset``."""

    leanpool: Literal["more"]
    offset: int


class EndInputRecord(TypedDict):
    """No task will be added after byte ``offset`` of the spool."""

    leanpool: Literal["end_input"]
    offset: int


class StopRecord(TypedDict):
    """Stop the run as EOF would, but the caller lives on: it keeps its own directory
    (the runner removes ``cleanup_dir`` only for a caller that is gone)."""

    leanpool: Literal["stop"]


class _CancelRequired(TypedDict):
    leanpool: Literal["cancel"]
    id: str | int


class CancelRecord(_CancelRequired, total=False):
    """Cancel the task with this id: kill it if it runs (its result says ``cancelled``),
    or give it a ``cancelled`` result without starting it.

    ``before``: the spool offset the caller had written up to when it cancelled; the
    cancel is for a task whose line ends there or before, never for one added after it
    with the same id, and it is forgotten once the runner has read that far and found
    none waiting (without it, a cancel waits for the id as long as the run lasts)."""

    before: int


class HaltRecord(TypedDict):
    """Start no more tasks; the running ones finish and report, and the run ends with
    ``halted`` true (the cluster driver halts every batch this way when the run's
    ``halt`` is reached elsewhere)."""

    leanpool: Literal["halt"]


# -- encoding ------------------------------------------------------------------------------

_encode_compact: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_ascii: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def encode_line(record: object) -> bytes:
    """One record as one UTF-8 JSON line, newline included."""
    text = _encode_compact(record)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        # Only a lone surrogate (an id sent as "\ud800") gets here; \u-escape everything.
        return _encode_ascii(record).encode("ascii") + b"\n"


def decode_output(data: bytes) -> tuple[str, str | None]:
    """A task's output as (text, base64-or-None): the text is exact when it is UTF-8.

    Otherwise the text has U+FFFD where bytes were invalid, and the base64 form carries
    the exact bytes, so that nothing is lost and valid output pays nothing extra.
    """
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return (
            data.decode("utf-8", "replace"),
            binascii.b2a_base64(data, newline=False).decode("ascii"),
        )

"""Turning how an attempt ended into the result record the protocol sends.

The common record, a task that exited 0 with small output, is built with no field it
does not need: the optional fields (``timed_out``, ``signal``, ``attempts``, ...) are
added only when they say something.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from .._protocol.records import SPILL_OVER, decode_output
from .piped import encode_result

if TYPE_CHECKING:
    from .._protocol.records import ResultRecord
    from .children import Child, Outcome

__all__ = [
    "Built",
    "cancelled_result",
    "plain_lines",
    "result_of",
    "signal_name",
    "unstarted_result",
]


class Built:
    """A result record, and the record for the journal when it differs (a spilled
    output: the journal keeps every byte inline, since it outlives the spill files).

    The plain record of a command that ended well comes encoded already (``encoded``):
    ``line``, and ``journal_line`` (the same with the task's digest) when a journal is
    kept; then ``record`` is None.
    """

    __slots__ = ("journal", "journal_line", "line", "ok", "record")

    def __init__(self, record: ResultRecord, journal: ResultRecord | None = None) -> None:
        self.record: ResultRecord | None = record
        self.journal = journal
        self.ok: bool = record["ok"]
        self.line: bytes | None = None
        self.journal_line: bytes | None = None

    @classmethod
    def encoded(cls, line: bytes, journal_line: bytes | None, *, ok: bool) -> Built:
        built = cls.__new__(cls)
        built.record = None
        built.journal = None
        built.ok = ok
        built.line = line
        built.journal_line = journal_line
        return built


def result_of(
    child: Child, outcome: Outcome, spill_dir: str | None, digest: str | None = None
) -> Built:
    """The result record of a finished attempt (and its journal line, with ``digest``).

    With spill_dir, an output of ``SPILL_OVER`` bytes or more goes to a file there (named
    by the attempt) and the record names it.  The plain record (a first attempt that
    exited on its own, output whole, UTF-8 and inline) is encoded in C where the engine
    is built: the same bytes as ``encode_line`` of the record below.
    """
    status = outcome.status
    out, err = outcome.stdout, outcome.stderr
    plain = outcome.fields is None and outcome.stdout_file is None
    if plain and not (outcome.stdout_truncated or outcome.stderr_truncated):
        lines = plain_lines(child, status, out, err, spill_dir, digest)
        if lines is not None:
            return Built.encoded(*lines, ok=status == 0)
    ok = status == 0 and not child.timed_out
    record: ResultRecord = {
        "id": child.task.id,
        "status": status,
        "ok": ok,
        "duration": round(time.monotonic() - child.started, 6),
        "stdout": "",
        "stderr": "",
    }
    journal = None
    if outcome.stdout_file is not None:
        record["stdout_file"] = outcome.stdout_file
        if outcome.stderr_file is not None:
            record["stderr_file"] = outcome.stderr_file
    elif spill_dir is not None and (len(out) >= SPILL_OVER or len(err) >= SPILL_OVER):
        journal = record.copy()
        _put_output(journal, "stdout", out)
        _put_output(journal, "stderr", err)
        _add_details(journal, child, outcome)
        base = os.path.join(spill_dir, f"{child.seq}.{child.attempt}")
        _spill_output(record, "stdout", out, base)
        _spill_output(record, "stderr", err, base)
    else:
        record["stdout"], out_b64 = decode_output(out)
        record["stderr"], err_b64 = decode_output(err)
        if out_b64 is not None:
            record["stdout_b64"] = out_b64
        if err_b64 is not None:
            record["stderr_b64"] = err_b64
    if not ok or child.attempt > 1 or outcome.stdout_truncated or outcome.stderr_truncated:
        _add_details(record, child, outcome)
    fields = outcome.fields
    if fields is not None:
        record.update(fields)  # type: ignore[typeddict-item]  # a call's value or error
        if journal is not None:
            journal.update(fields)  # type: ignore[typeddict-item]
        spilled = fields.get("value_spill")
        if isinstance(spilled, str):
            if journal is None:
                journal = record.copy()
            del journal["value_spill"]
            journal["value_pickle"] = _read_back(spilled)
    return Built(record, journal)


def _read_back(path: str) -> str:
    """A spilled value as base64, for the journal, which outlives spill files."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return binascii.b2a_base64(b"".join(chunks), newline=False).decode("ascii")


def plain_lines(
    child: Child,
    status: int,
    out: bytes,
    err: bytes,
    spill_dir: str | None,
    digest: str | None,
    now: float | None = None,
) -> tuple[bytes, bytes | None] | None:
    """The plain record's line, and the journal's (with ``digest``), encoded in C.

    The plain record is a first attempt's that exited on its own (no signal, no timeout,
    no cancel), its outputs UTF-8 and inline (under ``SPILL_OVER`` with a spill_dir), and
    the caller vouches for the rest (not cut by max_output, no files, no call fields):
    only the fields every result has.  None where Python must build the record, or
    without the engine.  ``now``: when the attempt was seen to end, if known.
    """
    if (
        encode_result is None
        or status < 0
        or child.attempt != 1
        or child.timed_out
        or child.cancelled
        or (spill_dir is not None and (len(out) >= SPILL_OVER or len(err) >= SPILL_OVER))
    ):
        return None
    duration = (time.monotonic() if now is None else now) - child.started
    task_id = child.task.id
    line = encode_result(task_id, status, duration, out, err, None)
    if line is None or digest is None:
        return None if line is None else (line, None)
    return line, encode_result(task_id, status, duration, out, err, digest)


def cancelled_result(task_id: str | int, attempt: int) -> Built:
    """The result of a task cancelled before it started."""
    record = _unstarted_record(task_id, attempt, -signal.SIGTERM, "cancelled before it started")
    record["cancelled"] = True
    return Built(record)


def unstarted_result(task_id: str | int, attempt: int, status: int, error: str) -> Built:
    """The result of a task that could not start (127: not found, 126: any other reason)."""
    return Built(_unstarted_record(task_id, attempt, status, error))


def _unstarted_record(task_id: str | int, attempt: int, status: int, error: str) -> ResultRecord:
    record: ResultRecord = {
        "id": task_id,
        "status": status,
        "ok": False,
        "duration": 0.0,
        "stdout": "",
        "stderr": "",
        "error": error,
    }
    if attempt > 1:
        record["attempts"] = attempt
    return record


def _add_details(record: ResultRecord, child: Child, outcome: Outcome) -> None:
    """The fields that only say something when a task failed or was cut short."""
    if outcome.stdout_truncated:
        record["stdout_truncated"] = True
    if outcome.stderr_truncated:
        record["stderr_truncated"] = True
    if child.timed_out:
        record["timed_out"] = True
    if child.cancelled:
        record["cancelled"] = True
    if outcome.status < 0:
        record["signal"] = signal_name(-outcome.status)
    if child.attempt > 1:
        record["attempts"] = child.attempt


def _put_output(record: ResultRecord, name: str, data: bytes) -> None:
    text, b64 = decode_output(data)
    if name == "stdout":
        record["stdout"] = text
        if b64 is not None:
            record["stdout_b64"] = b64
    else:
        record["stderr"] = text
        if b64 is not None:
            record["stderr_b64"] = b64


def _spill_output(record: ResultRecord, name: str, data: bytes, base: str) -> None:
    """Inline a small output; write a big one to a file the caller reads and removes."""
    if len(data) < SPILL_OVER:
        _put_output(record, name, data)
        return
    path = f"{base}.{name}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError:  # a full disk: the pipe to the caller still takes it, only slower
        with contextlib.suppress(OSError):
            os.unlink(path)
        _put_output(record, name, data)
        return
    if name == "stdout":
        record["stdout_spill"] = path
    else:
        record["stderr_spill"] = path


def signal_name(signum: int) -> str:
    """SIGTERM for 15; SIG99 for a number no signal has."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"

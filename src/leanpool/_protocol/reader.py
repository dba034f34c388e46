"""Reading a runner's output: bytes in, typed events out, no I/O of its own.

Every caller (the sync ``RunnerProcess``, the CLI, later the asyncio one) feeds this
reader whatever bytes it read, however they were cut, and acts on the events it gets
back: the one place where a line of the protocol is decoded and checked.  ``close()`` at
EOF is how a caller tells a finished run from a dead runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias, cast

from .._errors import ProtocolError, RunnerCrashed
from .records import PROTOCOL_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable

    from .records import EndRecord, FatalRecord, ResultRecord


__all__ = [
    "Ended",
    "Event",
    "Fatal",
    "Idle",
    "RecordReader",
    "ResultEvent",
    "Skipped",
    "Started",
]

_MAX_PENDING: Final = 1 << 30
"""Bytes of one unfinished line the reader holds before calling the stream broken: far
above any real result (big outputs travel as spill files), far below running out."""


@dataclass(frozen=True, slots=True)
class Started:
    """The runner is ready; ``total``/``skipped`` only for a task file validated whole."""

    total: int | None
    skipped: int | None


class ResultEvent(NamedTuple):
    """One finished task: its record, and the exact line it came in (for the CLI).

    A named tuple, where the other events are frozen dataclasses: there is one per
    result, and a tuple is made in half the time of a frozen dataclass (whose
    ``__init__`` stores each field through ``object.__setattr__``)."""

    record: ResultRecord
    line: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    """So far ``count`` tasks read were already in the journal (cumulative)."""

    count: int


@dataclass(frozen=True, slots=True)
class Idle:
    """Every task up to ``offset`` is done and nothing runs."""

    offset: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The run ended: the last event."""

    record: EndRecord


@dataclass(frozen=True, slots=True)
class Fatal:
    """The run was refused, or a streamed task was bad: the last event."""

    record: FatalRecord


Event: TypeAlias = "Started | ResultEvent | Skipped | Idle | Ended | Fatal"


_RESULT_FIELDS: Final = (("id", (str, int)), ("status", int), ("ok", bool), ("duration", float))


def _scan_with_loads(text: str, index: int) -> tuple[object, int]:
    """json.loads in the shape of a scanner: the value and where it ends (the newline)."""
    return json.loads(text[index:]), len(text) - 1


_scan: Final[Callable[[str, int], tuple[object, int]]] = getattr(
    json.JSONDecoder(), "scan_once", _scan_with_loads
)
"""json's own scanner, without json.loads's detour through encoding detection and
whitespace matching: a record the runner wrote starts at its first byte.  ``scan_once``
is an attribute every CPython decoder has had since 2.6 but no documented API: where it
is missing, json.loads does the same work."""


class RecordReader:
    """Turns the runner's stdout into events, checking each record as it goes.

    Invariants: ``_pending`` holds the pieces of a line whose newline has not come yet
    (``_pending_size`` bytes);
    ``finished`` becomes true at the ``end`` or ``fatal`` record, after which no byte
    may follow; ``completed`` counts the result events returned so far.
    """

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.finished = False
        self.completed = 0

    def feed(self, data: bytes) -> list[Event]:
        """The events in data (with what an earlier feed left unfinished).

        Raises:
            ProtocolError: a line is not a record of this protocol, or something came
                after the last record.
        """
        if not data:
            return []
        # find(), not "in": bytes.__contains__ first tries the needle as an integer,
        # and builds (then drops) a TypeError each time.
        newline = data.find(b"\n")
        pending = self._pending
        if newline == len(data) - 1 and not pending:  # one whole line: the common read
            return [self._event(data)]
        if newline < 0:  # a piece of a long line: keep it, join once at its end
            pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > _MAX_PENDING:
                raise ProtocolError(data[:200], "a line without end", completed=self.completed)
            return []
        if pending:
            pending.append(data)
            data = b"".join(pending)
            pending.clear()
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            pending.append(tail)
        self._pending_size = len(tail)
        event = self._event
        events: list[Event] = []
        for line in lines:  # a loop, not a list comprehension: that makes a closure per call
            events.append(event(line + b"\n"))  # noqa: PERF401
        return events

    def close(self, returncode: int | None = None, stderr: str = "") -> None:
        """The stream has ended: fine after the last record, a dead runner otherwise.

        Raises:
            RunnerCrashed: the stream ended without an ``end`` or ``fatal`` record (or
                in the middle of a line: the runner died while writing).
            ProtocolError: something that is not a whole line came after the last record.
        """
        if not self.finished:
            raise RunnerCrashed(returncode, stderr, completed=self.completed)
        if self._pending:
            raise ProtocolError(
                b"".join(self._pending)[:200],
                "data after the last record",
                completed=self.completed,
            )

    def _event(self, line: bytes) -> Event:
        if self.finished:
            raise ProtocolError(line, "data after the last record", completed=self.completed)
        try:
            text = line.decode("utf-8")
            record, end = _scan(text, 0)
            if end != len(text) - 1 and not text[end:].isspace():
                raise ValueError("data after the record")
        except (StopIteration, ValueError, RecursionError):  # json.loads says it exactly
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise ProtocolError(line, "not JSON", completed=self.completed) from None
        if type(record) is not dict:
            raise ProtocolError(line, "not an object", completed=self.completed)
        kind = record.get("leanpool")
        if kind is None:
            task_id = record.get("id")
            if not (
                type(record.get("status")) is int
                and type(record.get("ok")) is bool
                and type(record.get("duration")) is float
                and (type(task_id) is str or type(task_id) is int)
            ):  # not the common record: say what is wrong (a duration of 0 is all right)
                self._check_result(record, line)
            self.completed += 1
            return ResultEvent(cast("ResultRecord", record), line)
        if record.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(
                line,
                f"protocol {record.get('protocol')!r}, expected {PROTOCOL_VERSION}",
                completed=self.completed,
            )
        if kind == "start":
            return Started(_count(record, "total"), _count(record, "skipped"))
        if kind == "skipped":
            count = _count(record, "skipped")
            if count is None:
                raise ProtocolError(line, "skipped without a count", completed=self.completed)
            return Skipped(count)
        if kind == "idle":
            offset = _count(record, "offset")
            if offset is None:
                raise ProtocolError(line, "idle without an offset", completed=self.completed)
            return Idle(offset)
        if kind == "end":
            self.finished = True
            return Ended(cast("EndRecord", record))
        if kind == "fatal":
            self.finished = True
            return Fatal(cast("FatalRecord", record))
        raise ProtocolError(line, f"unknown record {kind!r}", completed=self.completed)

    def _check_result(self, record: dict[str, object], line: bytes) -> None:
        """Raise for a result record that lacks a field or has one of the wrong type.

        ``_event`` tests the common record inline (a call per result costs); this is
        the rest, field by field."""
        for name, kind in _RESULT_FIELDS:
            value = record.get(name)
            # A duration of 0 arrives as an int; a bool is an int but no status or id.
            if not isinstance(value, kind) and not (name == "duration" and type(value) is int):
                raise ProtocolError(line, f"bad or missing {name!r}", completed=self.completed)
            if isinstance(value, bool) and name != "ok":
                raise ProtocolError(line, f"bad {name!r}", completed=self.completed)


def _count(record: dict[str, object], name: str) -> int | None:
    value = record.get(name)
    return value if type(value) is int else None

"""The records a run sends about itself rather than about a task: ``skipped``, ``idle``,
and its last record, ``end`` or ``fatal``.

Built from the Intake's counts and the run's own; shared by the lean runner and the
cluster driver, so that both say the same things at the same moments.  Standard
library only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._protocol.records import PROTOCOL_VERSION, encode_line

if TYPE_CHECKING:
    from .._errors import TaskFileError
    from .._protocol.records import EndRecord, FatalKind, FatalRecord, IdleRecord, SkippedRecord
    from .intake import Intake
    from .outbox import Outbox

__all__ = ["InputReports", "end_record", "fatal_record"]


class InputReports:
    """``skipped`` when the journal's count of tasks read changed (streams only: a task
    file's is in ``start``), ``idle`` once per offset at which everything announced is
    done.

    Invariants: ``_skipped_sent`` is the count last sent; ``_idle_at`` the offset
    ``idle`` was last sent for (-1: never).
    """

    def __init__(self, intake: Intake, outbox: Outbox) -> None:
        self._intake = intake
        self._outbox = outbox
        self._skipped_sent = 0
        self._idle_at = -1

    def skipped(self) -> None:
        intake = self._intake
        if intake.skipped == self._skipped_sent:
            return
        self._skipped_sent = intake.skipped
        if intake.stream:
            record: SkippedRecord = {
                "leanpool": "skipped",
                "protocol": PROTOCOL_VERSION,
                "skipped": intake.skipped,
            }
            self._outbox.control(encode_line(record))

    def idle(self) -> None:
        """Nothing runs: say ``idle`` if every task announced was read, at a new offset."""
        intake = self._intake
        if intake.caught_up and intake.offset != self._idle_at:
            self._idle_at = intake.offset
            record: IdleRecord = {
                "leanpool": "idle",
                "protocol": PROTOCOL_VERSION,
                "offset": intake.offset,
            }
            self._outbox.control(encode_line(record))


def end_record(
    intake: Intake, *, completed: int, failed: int, halted: bool, stopped_by: str | None
) -> EndRecord:
    return {
        "leanpool": "end",
        "protocol": PROTOCOL_VERSION,
        "tasks": intake.tasks,
        "skipped": intake.skipped,
        "completed": completed,
        "failed": failed,
        "unfinished": intake.tasks - intake.skipped - completed,
        "skipped_failed": intake.skipped_failed,
        "halted": halted,
        "interrupted": stopped_by is not None,
        "stopped_by": stopped_by,
    }


def fatal_record(
    kind: FatalKind, message: str, *, bad_line: TaskFileError | None = None
) -> FatalRecord:
    """A ``fatal`` record; a ``task_file`` one names the line (``bad_line``)."""
    record: FatalRecord = {
        "leanpool": "fatal",
        "protocol": PROTOCOL_VERSION,
        "error": kind,
        "message": message,
    }
    if bad_line is not None:
        record["line"] = bad_line.line
        record["reason"] = bad_line.reason
    return record

"""The cancels of a run that have not met their task yet: one policy for the lean
runner's loop and the cluster driver.

A cancel names a task id, and, from a caller that says it, the spool offset it had
written up to (``before``): the cancel is for a task whose line ends there or before,
never for a task added later with the same id.  A cancel that finds its task running is
acted on at once by the run; one that does not waits here for the task to be read, or
for a retry of it to come up.  Once every line before ``before`` was read and no retry
of the id waits, the cancel's task had finished before it came: the cancel is
forgotten, so the set stays as small as the cancels that can still matter.  Standard
library only: the lean runner imports this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["PendingCancels"]


class PendingCancels:
    """Invariant: every entry is a cancel that may still meet its task: ``before`` is
    None (the caller did not say), or past the lines read so far, or a retry of the id
    waits."""

    def __init__(self, retrying: Callable[[str | int], bool]) -> None:
        """``retrying(id)``: whether an attempt of that task waits to run again."""
        self.pending: dict[str | int, int | None] = {}
        """By id, each cancel's ``before``: read directly by the loop before each start
        (an empty dict is the common case, and costs no call)."""
        self._retrying = retrying

    def add(self, task_id: str | int, before: int | None, consumed: int) -> None:
        """A cancel that found no running task; ``consumed``: where the lines read so
        far end."""
        if before is None or not self._stale(task_id, before, consumed):
            self.pending[task_id] = before

    def meets(self, task_id: str | int, *, retry: bool, consumed: int) -> bool:
        """Whether the attempt about to start (a retry, or the task whose line ends at
        ``consumed``) is cancelled; the cancel is used up then.  Forgets the cancels
        that can no longer meet their task."""
        pending = self.pending
        if task_id in pending:
            before = pending[task_id]
            if before is None or retry or consumed <= before:
                del pending[task_id]
                return True
        for other, before in list(pending.items()):
            if before is not None and self._stale(other, before, consumed):
                del pending[other]
        return False

    def _stale(self, task_id: str | int, before: int, consumed: int) -> bool:
        return consumed >= before and not self._retrying(task_id)

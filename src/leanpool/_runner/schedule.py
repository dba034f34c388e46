"""What to start next: the concurrency limit, attempts waiting to be retried, and
throttling when the system runs out of descriptors or processes.

New tasks come from the intake only when nothing here is ready, so a retry goes before
the tasks after it, and the runner never holds more than the tasks it runs.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final

from .timers import When

if TYPE_CHECKING:
    from .._protocol.tasks import Task
    from .timers import Timers

__all__ = ["BACKOFF_S", "Attempt", "Schedule"]

BACKOFF_S: Final = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 2.0, 2.0)
"""Waits before trying again to start a task when the system is out of descriptors or
processes and no running task can free any; after the last one the task fails."""


class Attempt:
    """A task's next attempt, waiting to start: the task, its seq, the attempt number."""

    __slots__ = ("number", "seq", "task")

    def __init__(self, task: Task, seq: int, number: int) -> None:
        self.task = task
        self.seq = seq
        self.number = number

    def __repr__(self) -> str:
        return f"<Attempt {self.number} of task {self.task.id!r}>"


class Schedule:
    """The attempts ready to start before any new task, and how many may run at once.

    Invariants: ``parallel`` only ever goes down (throttling), never below 1;
    ``waiting_retries`` counts the RETRY deadlines not yet due; ``retrying`` counts, by
    task id, the attempts queued (waiting or ready) and not yet started.
    """

    def __init__(
        self, timers: Timers[object], *, parallel: int, retries: int, retry_delay: float
    ) -> None:
        self.parallel = parallel
        self.ready: collections.deque[Attempt] = collections.deque()
        self.waiting_retries = 0
        self.retrying: collections.Counter[str | int] = collections.Counter()
        self._timers = timers
        self._retries = retries
        self._retry_delay = retry_delay
        self._backoff_step = 0

    @property
    def pending(self) -> bool:
        """Whether an attempt is ready or waiting for its retry delay."""
        return bool(self.ready) or self.waiting_retries > 0

    def retry(self, task: Task, seq: int, attempt: int) -> bool:
        """Queue the next attempt of a failed task after the delay; False if none is left."""
        if attempt > self._retries:
            return False
        self.waiting_retries += 1
        self.retrying[task.id] += 1
        self._timers.add(self._retry_delay, When.RETRY, Attempt(task, seq, attempt + 1))
        return True

    def retry_due(self, attempt: Attempt, *, stopping: bool) -> None:
        """A retry delay is over: the attempt is ready (unless the run is stopping)."""
        self.waiting_retries -= 1
        if stopping:
            self.taken(attempt.task.id)
        else:
            self.ready.append(attempt)

    def taken(self, task_id: str | int) -> None:
        """A queued attempt of task_id left the queue (it starts, or is dropped)."""
        left = self.retrying[task_id] - 1
        if left > 0:
            self.retrying[task_id] = left
        else:
            del self.retrying[task_id]

    def started(self) -> None:
        """An attempt started: the system had room again."""
        self._backoff_step = 0

    def out_of_resources(self, running: int) -> str | bool:
        """An attempt could not start for lack of descriptors or processes.

        Returns:
            A warning (str) when the limit was lowered to what runs now; True when the
            loop should wait (a back-off deadline was set); False when waiting did not
            help and the attempt should fail.
        """
        if running:
            # Running tasks will free descriptors and processes: run fewer at once.
            if running < self.parallel:
                self.parallel = running
                return f"now running at most {self.parallel} tasks at once"
            return True
        if self._backoff_step < len(BACKOFF_S):
            self._timers.add(BACKOFF_S[self._backoff_step], When.WAKE, None)
            self._backoff_step += 1
            return True
        self._backoff_step = 0
        return False

    def clear(self) -> None:
        """The run is stopping: start nothing more."""
        for attempt in self.ready:
            self.taken(attempt.task.id)
        self.ready.clear()

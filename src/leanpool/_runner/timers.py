"""The runner's deadlines: one heap, each entry a typed kind and the thing it is about.

A deadline is never removed when what it is about ends first (a task that exits before
its timeout): the loop checks, when one fires, whether its subject still matters.  That
keeps adding a deadline one heap push and ending a task free of heap surgery.
"""

from __future__ import annotations

import enum
import heapq
import math
import time
from typing import Generic, TypeVar

__all__ = ["Deadline", "Timers", "When"]


class When(enum.Enum):
    """What a deadline is for."""

    TERM = "term"
    """An attempt outlived its timeout: SIGTERM its group."""
    KILL = "kill"
    """An attempt outlived its grace after SIGTERM: SIGKILL its group."""
    KILL_LEFTOVERS = "kill_leftovers"
    """A finished attempt's group outlived its grace: SIGKILL what it left behind."""
    RETRY = "retry"
    """A failed task's retry delay is over: queue its next attempt."""
    REAP = "reap"
    """Look again for an exit that could not be watched (out of descriptors)."""
    WATCH_EXITS = "watch_exits"
    """Watch the exits of the tasks that have run for ``EXIT_WATCH_AFTER_S``."""
    WAKE = "wake"
    """Nothing to do but wake the loop: try starting tasks again after a back-off."""


S = TypeVar("S")


class Deadline(Generic[S]):
    """One deadline: when, what for, and its subject (an attempt, a group id, a task)."""

    __slots__ = ("at", "seq", "subject", "what")

    def __init__(self, at: float, seq: int, what: When, subject: S) -> None:
        self.at = at
        self.seq = seq
        self.what = what
        self.subject = subject

    def __lt__(self, other: Deadline[S]) -> bool:
        return (self.at, self.seq) < (other.at, other.seq)

    def __repr__(self) -> str:
        return f"<Deadline {self.what.name} at {self.at:.3f}: {self.subject!r}>"


class Timers(Generic[S]):
    """A heap of deadlines, in the order they are due (ties: in the order added)."""

    def __init__(self) -> None:
        self._heap: list[Deadline[S]] = []
        self._seq = 0
        self.next_at = math.inf
        """When the earliest deadline is due (``time.monotonic``), inf with none: the
        loop's one test per turn."""

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, delay: float, what: When, subject: S) -> Deadline[S]:
        """A deadline delay seconds from now."""
        self._seq += 1
        deadline = Deadline(time.monotonic() + delay, self._seq, what, subject)
        heapq.heappush(self._heap, deadline)
        self.next_at = self._heap[0].at
        return deadline

    def wait_s(self) -> float:
        """Seconds until the next deadline (0 if one is due); -1 when there is none."""
        if not self._heap:
            return -1
        return max(0.0, self._heap[0].at - time.monotonic())

    def due(self) -> list[Deadline[S]]:
        """Remove and return every deadline that is due now, earliest first."""
        heap = self._heap
        if not heap:
            return []
        now = time.monotonic()
        fired = []
        while heap and heap[0].at <= now:
            fired.append(heapq.heappop(heap))
        self.next_at = heap[0].at if heap else math.inf
        return fired

    def pending(self, what: When) -> list[Deadline[S]]:
        """The deadlines of one kind not yet due, earliest first."""
        return sorted(d for d in self._heap if d.what is what)

"""How big a batch is, and how many are in flight.

A Dask task costs about a millisecond of scheduler work, and each batch starts a lean
runner on its worker (tens of ms): a batch should take seconds, so that both are a
percent or two of its time.  Too big, and the last batches of a run leave most workers
idle while a few finish, and a worker's death costs more work again.  So the size
follows the measured rate: ``TARGET_S`` of work at the rate the batches that came back
ran at, growing at most ``GROWTH`` times per batch (the first measures may be of a few
slow tasks), never above ``MOST``; and with the number of tasks left known (a task file
validated whole), never above an even share of them per worker thread, so that the
run's tail is spread over every worker, down to ``LEAST_S`` of work a batch (below that, a batch's
own start, tens of ms, would cost more than the spread saves).

In flight: ``PER_THREAD`` batches per worker thread, one running and one queued behind
it, so a thread never waits on the driver and the scheduler never holds more than a few
batches per thread, whatever the number of tasks.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["FIRST", "GROWTH", "LEAST_S", "MOST", "PER_THREAD", "TARGET_S", "BatchSizer"]

TARGET_S: Final = 2.0
"""Seconds of work a batch aims at."""

FIRST: Final = 8
"""Tasks in a batch before any batch came back, when the tasks a batch runs at once
are not known (the workers choose): one wave of a typical worker's."""

LEAST_S: Final = 0.5
"""Seconds of work below which the tail of a run is not split further."""

GROWTH: Final = 8.0
"""At most this many times the previous size."""

MOST: Final = 20_000
"""Tasks in a batch at the most: bounds a batch's lines and results in memory."""

PER_THREAD: Final = 2
"""Batches in flight per worker thread."""


class BatchSizer:
    """The size of the next batch, from the rate of those that came back.

    Invariants: ``rate`` is None until a batch came back, then the tasks per second of
    one batch slot (a moving average over batches, weighted by their length);
    ``last`` is the size handed out last.
    """

    def __init__(self, first: int | None = None) -> None:
        """Args:
        first: the size before any batch came back: the tasks a batch runs at once,
            when known (one wave: long tasks are spread over the workers at once).
        """
        self.first = first or FIRST
        self.rate: float | None = None
        self.last = self.first
        self._tasks = 0.0
        self._seconds = 0.0

    def observe(self, tasks: int, seconds: float) -> None:
        """A batch of ``tasks`` ran ``seconds`` on its worker."""
        if tasks <= 0:
            return
        # Decay the history so that the rate follows a batch whose tasks change.
        self._tasks = self._tasks * 0.5 + tasks
        self._seconds = self._seconds * 0.5 + max(seconds, 1e-3)
        self.rate = self._tasks / self._seconds

    def next_size(self, *, left: int | None, threads: int) -> int:
        """How many tasks the next batch takes.

        Args:
            left: tasks not yet sent to the cluster, when known.
            threads: the cluster's worker threads (each runs one batch at a time).
        """
        if self.rate is None:
            size = self.first
        else:
            size = min(round(self.rate * TARGET_S), math.ceil(self.last * GROWTH), MOST)
        if left is not None:
            share = math.ceil(left / max(1, threads))
            least = 1 if self.rate is None else round(self.rate * LEAST_S)
            size = min(size, max(share, least))
        self.last = max(1, size)
        return self.last

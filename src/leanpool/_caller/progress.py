"""The progress bar of a run: tasks done, rate and ETA, and the failures so far.

One bar for every caller: the CLI draws it on stderr with tqdm's terminal front-end;
the library (``run(progress=True)``, ``arun(progress=True)``, ``Executor.map``) through
``tqdm.auto``, which renders as a widget in Jupyter and as text on a terminal.  tqdm is
imported only when a bar is shown, so plain runs start as quickly as before.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .._protocol.reader import Started

if TYPE_CHECKING:
    from .._protocol.reader import Skipped

__all__ = ["Progress"]


class Progress:
    """A bar that counts results; its total follows the tasks known so far."""

    def __init__(self, *, total: int | None = None, terminal: bool = False) -> None:
        """
        Args:
            total: how many results to expect, if known (it may grow: ``set_total``).
            terminal: draw on stderr with the terminal front-end (the CLI), rather than
                tqdm.auto's choice.
        """
        if terminal:
            from tqdm import tqdm  # only when a bar is shown

            self._bar = tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True)
        else:
            from tqdm.auto import tqdm as auto_tqdm

            self._bar = auto_tqdm(total=total, unit="task", dynamic_ncols=True)
        self._failed = 0

    def started(self, event: Started | Skipped) -> None:
        """A runner's first word (a task file's totals), or resume's skips so far."""
        if isinstance(event, Started):
            if event.total is not None:
                self._bar.reset(total=event.total - (event.skipped or 0))
            skipped = event.skipped or 0
        else:
            skipped = event.count
        if skipped:
            self._bar.set_description(f"resumed, {skipped} done before")

    def set_total(self, total: int) -> None:
        """Tasks were added: the total grows, the count stays."""
        if self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def advance(self, *, ok: bool) -> None:
        if not ok:
            self._failed += 1
            self._bar.set_postfix(failed=self._failed, refresh=False)
        self._bar.update()

    def close(self) -> None:
        self._bar.close()

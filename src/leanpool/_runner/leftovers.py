"""What tasks leave behind: process groups that outlived their task's main process.

Each got SIGTERM when its task ended; SIGKILL follows after the grace (a ``When.
KILL_LEFTOVERS`` deadline), or at once when the run stops.  A group's leader is reaped by
then, so its id is free once its last member is gone, and an unrelated group may get it:
a group is killed only while a live member still carries the run's ``LEANPOOL_RUN`` mark.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from .._protocol.records import RUN_TOKEN_ENV
from .reaping import group_has_live_member, signal_group
from .timers import When

if TYPE_CHECKING:
    from collections.abc import Container

    from .timers import Timers

__all__ = ["Leftovers"]


class Leftovers:
    """The leftover groups of a run that got SIGTERM and may still need SIGKILL.

    Invariant: ``_groups`` holds the id of every group signalled and not yet killed or
    seen gone; ``active`` (the pids of running tasks) is never killed through it, since
    a task of ours may have been given a freed group id.
    """

    def __init__(self, timers: Timers[object], active: Container[int]) -> None:
        self._timers = timers
        self._active = active
        self._groups: set[int] = set()
        token = os.environ.get(RUN_TOKEN_ENV)
        self._mark = None if token is None else f"{RUN_TOKEN_ENV}={token}".encode()

    def found(self, pgid: int, grace: float) -> None:
        """SIGTERM the group now, SIGKILL after grace."""
        signal_group(pgid, signal.SIGTERM)
        self._timers.add(grace, When.KILL_LEFTOVERS, pgid)
        self._groups.add(pgid)

    def grace_over(self, pgid: int) -> None:
        """Its ``When.KILL_LEFTOVERS`` deadline came."""
        if pgid in self._groups:
            self.kill(pgid)

    def kill(self, pgid: int) -> None:
        """SIGKILL a leftover group, if it is still this run's."""
        self._groups.discard(pgid)
        if pgid not in self._active and group_has_live_member(pgid, self._mark):
            signal_group(pgid, signal.SIGKILL)

    def kill_all(self) -> None:
        """The run stops or ends badly: no grace left for anyone."""
        for pgid in list(self._groups):
            self.kill(pgid)

    def remain(self) -> bool:
        """Forget the groups that are gone; whether any is left."""
        for pgid in list(self._groups):
            if not group_has_live_member(pgid, self._mark):
                self._groups.discard(pgid)
        return bool(self._groups)

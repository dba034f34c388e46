"""After a runner died: find every process of its run by the mark it carries, and kill it.

The caller starts the runner with ``LEANPOOL_RUN=<token>`` in its environment; every task
and every descendant inherits it, whatever process group or session it moved to.  A scan
of ``/proc/*/environ`` finds them all, at no cost per task while the run goes well.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from .._protocol.records import RUN_TOKEN_ENV

__all__ = ["sweep_run"]


def _environ(pid: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:  # gone already, or not ours to read
        return []


def marked_pids(token: str) -> list[int]:
    """The pids of live processes that carry this run's mark (not this process)."""
    mark = f"{RUN_TOKEN_ENV}={token}".encode()
    own = str(os.getpid())
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [
        int(name) for name in names if name.isdigit() and name != own and mark in _environ(name)
    ]


def sweep_run(token: str, *, deadline_s: float = 2.0) -> int:
    """Kill every process that carries this run's mark; return how many were signalled.

    Scans until one finds nobody left (a task may fork while we scan), or the deadline.
    """
    killed = 0
    end = time.monotonic() + deadline_s
    while True:
        pids = marked_pids(token)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        if not pids or time.monotonic() > end:
            return killed
        time.sleep(0.01)

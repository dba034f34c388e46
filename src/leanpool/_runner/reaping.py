"""How the runner learns that a child exited, collects its status, and signals its group.

The one place that knows the two ways a Linux kernel tells a parent about an exit: a
pidfd per child (Linux 5.3+), which is one more readable descriptor in the loop, or
SIGCHLD through ``signal.set_wakeup_fd`` where pidfds are missing.  ``pidfds_work``
picks; ``LEANPOOL_NO_PIDFD`` (our own switch) forces the fallback for its tests.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "become_subreaper",
    "group_alive",
    "open_pidfd",
    "pidfds_work",
    "reap_ready",
    "signal_group",
    "try_reap",
]

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt the orphans of our tasks (Linux 3.4+), so that we can reap them.

    A process a task leaves behind is reparented when the task's main process exits.
    To init, by default: and an init that does not reap (a container's) leaves its
    zombies in the task's process group forever, so that the group never looks empty.
    As a subreaper the runner gets them, and reaps them itself.  ctypes is imported
    here only: it is the one way to call prctl from the standard library.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def pidfds_work() -> bool:
    """Whether this kernel and Python give pidfds (Linux 5.3+, Python 3.9+)."""
    if os.environ.get("LEANPOOL_NO_PIDFD"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def open_pidfd(pid: int) -> int:
    """A descriptor that becomes readable when child pid exits (close-on-exec).

    Raises:
        OSError: out of descriptors (the caller looks again a moment later).
    """
    return os.pidfd_open(pid)


def try_reap(pid: int) -> int | None:
    """The exit code of child pid if it has exited (reaping it), else None; no blocking."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def reap_ready() -> Iterator[tuple[int, int]]:
    """Yield (pid, returncode) for every child that has exited, without blocking.

    waitpid(-1) is safe only because the runner owns every child it has: it never uses
    subprocess.Popen, whose own polling would read ECHILD as exit status 0.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)


def signal_group(pgid: int, sig: int) -> None:
    """Send sig to the whole process group pgid (a task's pid is its group id).

    Safe while the group's id cannot name another group: before its leader is reaped,
    or while a member is alive (a live member keeps the id from being reused).
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether process group pgid still has a member.

    Ask only after its leader was reaped, and after reaping what was adopted: an
    unreaped (zombie) member still counts.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials: it is still there
        return True
    return True

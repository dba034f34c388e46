"""How the runner learns that a child exited, collects its status, and signals its group.

The one place that knows the two ways a Linux kernel tells a parent about an exit: a
pidfd per child (Linux 5.3+), which is one more readable descriptor in the loop, or
SIGCHLD through ``signal.set_wakeup_fd`` where pidfds are missing.  ``pidfds_work``
picks; ``LEANPOOL_NO_PIDFD`` (our own switch) forces the fallback for its tests.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "group_alive",
    "group_has_live_member",
    "open_pidfd",
    "pidfds_work",
    "reap_ready",
    "signal_group",
    "try_reap",
]


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
    """Whether process group pgid still has a member, one syscall: the per-task probe.

    Ask only after its leader was reaped: an unreaped (zombie) leader counts.  So does a
    zombie member that its new parent has not reaped yet (an init that never reaps, in
    a container), which is why the slow paths ask ``group_has_live_member``.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials: it is still there
        return True
    return True


def group_has_live_member(pgid: int, mark: bytes | None) -> bool:
    """Whether a live (not zombie) process of group pgid carries mark in its environment.

    The mark (``LEANPOOL_RUN=<token>``) makes sure that the group is still one of this
    run's: once the last member of a task's group is gone, its id is free, and a SIGKILL
    sent to it a grace period later could hit an unrelated group that got the id.  Reads
    /proc, so it is for the rare paths only (leftovers); None skips the mark check.
    """
    try:
        names = os.listdir("/proc")
    except OSError:
        return False
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) != pgid or fields[0] in (b"Z", b"X"):
            continue
        if mark is None:
            return True
        try:
            if mark in _environ(name).split(b"\0"):
                return True
        except OSError:  # gone, or not ours to read: not ours
            continue
    return False


_ENVIRON_TRIES: Final = 10
_ENVIRON_PAUSE_S: Final = 0.001


def _environ(pid: str) -> bytes:
    """/proc/PID/environ, read again for up to about 10 ms while it is empty.

    A process in the middle of an exec has no environment for a moment: the kernel
    closes its close-on-exec descriptors (which is how its starter learns that the exec
    worked) before it lays out the new program's environment, and /proc reads empty
    until then (seen once in 300 starts on a loaded machine).  A member of a leftover
    group caught in that moment would read as not carrying the run's mark, and the
    group would escape its SIGKILL.  A process whose environment stays empty carries no
    mark anyway; this path runs only for leftovers.

    Raises:
        OSError: the process is gone, or its environment is not ours to read.
    """
    data = b""
    for _ in range(_ENVIRON_TRIES):
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
        if data:
            break
        time.sleep(_ENVIRON_PAUSE_S)
    return data

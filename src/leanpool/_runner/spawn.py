"""Starting a process without forking a big heap: what any kind of child needs to start.

A ``ProcessSpec`` says what to run (argv, environment, working directory, which of the
runner's descriptors become which of the child's); it knows nothing of task records, so
a shell task, a Python worker or a cluster driver are all started by ``start_process``.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "OUT_OF_RESOURCES",
    "Environ",
    "ProcessSpec",
    "SpawnError",
    "devnull",
    "merged_env",
    "start_process",
    "status_for",
]

_RESET_TO_DEFAULT: Final = (signal.SIGPIPE, signal.SIGXFSZ)
"""Python ignores these at start-up; a child must get the default action back, as
subprocess does with restore_signals=True, or ``yes | head`` would never end."""

OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})
"""A start that failed for one of these may work later: the loop waits, or runs fewer."""

Environ: TypeAlias = "Mapping[bytes, bytes]"
"""An environment as posix_spawn takes it fastest: bytes to bytes, nothing to encode."""

_DEVNULL_FD: int | None = None


class SpawnError(Exception):
    """A child could not be started; its ``status`` follows the shells' convention."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class ProcessSpec:
    """What to start: argv (PATH is searched for a name without ``/``), env, cwd, and
    ``fds``, pairs (runner's descriptor, child's number) dup'ed in the child.  The child
    inherits nothing else: every descriptor the runner opens is close-on-exec."""

    __slots__ = ("argv", "cwd", "env", "fds")

    def __init__(
        self,
        argv: list[str],
        env: Environ,
        fds: list[tuple[int, int]],
        cwd: str | None = None,
    ) -> None:
        self.argv = argv
        self.env = env
        self.fds = fds
        self.cwd = cwd


def devnull() -> int:
    """One read-only /dev/null descriptor for the runner's life, dup'ed onto stdins."""
    global _DEVNULL_FD
    if _DEVNULL_FD is None:
        _DEVNULL_FD = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _DEVNULL_FD


def merged_env(base: Environ, extra: Mapping[str, str | None]) -> dict[bytes, bytes]:
    """base with extra applied on top; None as a value unsets the variable."""
    env = dict(base)
    for key, value in extra.items():
        if value is None:
            env.pop(os.fsencode(key), None)
        else:
            env[os.fsencode(key)] = os.fsencode(value)
    return env


def status_for(exc: OSError) -> int:
    """127 when something named does not exist, 126 for any other failure to start:
    what sh reports for "command not found" and "cannot execute"."""
    return 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126


def start_process(spec: ProcessSpec, home_fd: int) -> int:
    """Start spec in a new session (its pid is its process group id); return the pid.

    posix_spawn runs on glibc's clone(CLONE_VM | CLONE_VFORK) path, so the cost of a start
    does not depend on the runner's memory, and it reports exec failures synchronously.

    Raises:
        SpawnError: it cannot start (missing program or cwd, argv with a NUL byte,
            argument list too long, ...).
        OSError: EMFILE, ENFILE, EAGAIN or ENOMEM: out of resources for now.
    """
    argv = spec.argv
    # The runner is single-threaded, so changing its own directory around the spawn is safe;
    # os.posix_spawn has no chdir file action on the Pythons we support.
    if spec.cwd is not None:
        try:
            os.chdir(spec.cwd)
        except OSError as exc:
            raise SpawnError(
                status_for(exc), f"cannot use cwd {spec.cwd!r}: {exc.strerror}"
            ) from None
    try:
        launch = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
        return launch(
            argv[0],
            argv,
            spec.env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in spec.fds],
            setsid=True,
            setsigmask=(),
            setsigdef=_RESET_TO_DEFAULT,
        )
    except OSError as exc:
        if exc.errno in OUT_OF_RESOURCES:
            raise
        raise SpawnError(status_for(exc), f"cannot run {argv[0]!r}: {exc.strerror}") from None
    except ValueError as exc:  # "embedded null byte", mostly
        raise SpawnError(126, f"cannot run {argv[0]!r}: {exc}") from None
    finally:
        if spec.cwd is not None:
            os.fchdir(home_fd)

"""One task's process: spawn it without forking a big heap, signal its group, reap it.

Standard library only: the lean runner imports this module.  The caller imports it too,
for ``sweep_run`` only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from ._task import Task

__all__ = [
    "RUN_TOKEN_ENV",
    "Child",
    "Environ",
    "SpawnError",
    "pidfds_work",
    "reap_ready",
    "signal_group",
    "spawn",
    "sweep_run",
    "try_reap",
]

RUN_TOKEN_ENV: Final = "LEANPOOL_RUN"
"""Environment variable that marks every process of one run (tasks and their descendants).

If the runner dies without killing its tasks (SIGKILL, a crash), the caller finds them by
this mark in ``/proc/PID/environ``: it costs nothing per task, and it also catches
grandchildren that left their task's process group."""

_RESET_TO_DEFAULT: Final = (signal.SIGPIPE, signal.SIGXFSZ)
"""Python ignores these at start-up; a task must get the default action back, as
subprocess does with restore_signals=True, or ``yes | head`` would never end."""

_DEVNULL_FD: int | None = None


class SpawnError(Exception):
    """A task could not be started; its ``status`` follows the shells' convention."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class Child:
    """The runner's book-keeping for one started attempt of a task."""

    __slots__ = (
        "abandoned",
        "attempt",
        "err_chunks",
        "err_fd",
        "err_path",
        "err_size",
        "err_truncated",
        "exit_fd",
        "in_fd",
        "in_view",
        "out_chunks",
        "out_fd",
        "out_path",
        "out_size",
        "out_truncated",
        "pid",
        "seq",
        "started",
        "status",
        "task",
        "timed_out",
    )

    def __init__(
        self, task: Task, seq: int, attempt: int, pid: int, out_fd: int, err_fd: int
    ) -> None:
        self.task = task
        self.seq = seq
        self.attempt = attempt
        self.pid = pid
        self.out_fd = out_fd  # -1 once closed, or when output goes to a file
        self.err_fd = err_fd
        self.in_fd = -1
        self.exit_fd = -1  # a pidfd, while waiting for an exit the pipes did not show
        self.in_view: memoryview | None = None
        self.out_chunks: list[bytes] = []
        self.err_chunks: list[bytes] = []
        self.out_size = 0
        self.err_size = 0
        self.out_truncated = False
        self.err_truncated = False
        self.out_path: str | None = None
        self.err_path: str | None = None
        self.status: int | None = None
        self.started = time.monotonic()
        self.timed_out = False
        self.abandoned = False  # killed by the runner itself (halt, interrupt): no result

    @property
    def pipes_closed(self) -> bool:
        """True when both output pipes reached EOF (or there were none)."""
        return self.out_fd < 0 and self.err_fd < 0

    def __repr__(self) -> str:
        state = "running" if self.status is None else f"exited with {self.status}"
        return f"<Child of task {self.task.id!r}, pid {self.pid}, {state}>"


def _devnull() -> int:
    global _DEVNULL_FD  # one descriptor for the runner's life, dup'ed onto each task's stdin
    if _DEVNULL_FD is None:
        _DEVNULL_FD = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _DEVNULL_FD


def _status_for(exc: OSError) -> int:
    # 127 when something the task names does not exist, 126 for any other failure to start:
    # what sh reports for "command not found" and "cannot execute".
    return 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126


Environ: TypeAlias = "Mapping[bytes, bytes]"
"""An environment as posix_spawn takes it fastest: bytes to bytes, nothing to encode."""


def _merged_env(base: Environ, extra: dict[str, str | None]) -> dict[bytes, bytes]:
    env = dict(base)
    for key, value in extra.items():
        if value is None:
            env.pop(os.fsencode(key), None)
        else:
            env[os.fsencode(key)] = os.fsencode(value)
    return env


def spawn(
    task: Task,
    seq: int,
    attempt: int,
    *,
    base_env: Environ,
    home_fd: int,
    output_paths: tuple[str, str] | None = None,
) -> Child:
    """Start one task with posix_spawn, in a new session, stdin from /dev/null or a pipe.

    posix_spawn runs on glibc's clone(CLONE_VM | CLONE_VFORK) path, so the cost of a start
    does not depend on the runner's memory, and it reports exec failures synchronously.
    The child inherits only 0, 1 and 2: every descriptor the runner opens is close-on-exec.

    Raises:
        SpawnError: the task cannot start (missing program or cwd, argv with a NUL byte,
            argument list too long, ...); the runner turns it into a failed Result.
        OSError: EMFILE, ENFILE or EAGAIN: the runner is out of descriptors or processes,
            and should retry once a running task has finished.
    """
    env = base_env if task.env is None else _merged_env(base_env, task.env)
    in_r = in_w = -1
    if output_paths is None:
        out_r, out_w = os.pipe()
        try:
            err_r, err_w = os.pipe()
        except OSError:
            os.close(out_r)
            os.close(out_w)
            raise
    else:
        out_r = err_r = -1
        out_w = err_w = -1
    to_close_on_failure = [out_r, err_r]
    try:
        if output_paths is not None:
            out_w, err_w = _open_outputs(output_paths)
        if task.stdin is not None:
            in_r, in_w = os.pipe()
            to_close_on_failure.append(in_w)
        stdin_source = _devnull() if in_r < 0 else in_r
        actions = [
            (os.POSIX_SPAWN_DUP2, stdin_source, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        pid = _start(task, env, actions, home_fd)
    except BaseException:
        for fd in to_close_on_failure:
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        # The child now holds the only write ends, so EOF on our read ends means it is done.
        for fd in (out_w, err_w, in_r):
            if fd >= 0:
                os.close(fd)
    child = Child(task, seq, attempt, pid, out_r, err_r)
    if in_w >= 0:
        os.set_blocking(in_w, False)
        child.in_fd = in_w
        child.in_view = memoryview(task.stdin or b"")
    if output_paths is not None:
        child.out_path, child.err_path = output_paths
    return child


def _open_outputs(paths: tuple[str, str]) -> tuple[int, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    out_fd = -1
    try:
        out_fd = os.open(paths[0], flags, 0o644)
        return out_fd, os.open(paths[1], flags, 0o644)
    except OSError as exc:
        if out_fd >= 0:
            os.close(out_fd)
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise
        raise SpawnError(126, f"cannot open output file {exc.filename!r}: {exc.strerror}") from None


def _start(task: Task, env: Environ, actions: list[tuple[int, int, int]], home_fd: int) -> int:
    argv = task.argv
    # The runner is single-threaded, so changing its own directory around the spawn is safe;
    # os.posix_spawn has no chdir file action on the Pythons we support.
    if task.cwd is not None:
        try:
            os.chdir(task.cwd)
        except OSError as exc:
            raise SpawnError(
                _status_for(exc), f"cannot use cwd {task.cwd!r}: {exc.strerror}"
            ) from None
    try:
        launch = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
        return launch(
            argv[0],
            argv,
            env,
            file_actions=actions,
            setsid=True,
            setsigmask=(),
            setsigdef=_RESET_TO_DEFAULT,
        )
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM):
            raise
        raise SpawnError(_status_for(exc), f"cannot run {argv[0]!r}: {exc.strerror}") from None
    except ValueError as exc:  # "embedded null byte", mostly
        raise SpawnError(126, f"cannot run {argv[0]!r}: {exc}") from None
    finally:
        if task.cwd is not None:
            os.fchdir(home_fd)


def signal_group(pid: int, sig: int) -> None:
    """Send sig to the whole process group of a task (its pid is its group id).

    Callers signal before reaping the leader, or while the group still holds the task's
    pipes: a live group keeps its id from being reused.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def pidfds_work() -> bool:
    """Whether this kernel and Python give pidfds (Linux 5.3+, Python 3.9+).

    With pidfds, a child's exit is one more readable descriptor in the loop, needed only
    for the rare child whose pipes closed before it exited: the runner then leaves
    SIGCHLD alone and pays no signal per task.  Without them, SIGCHLD wakes the loop.
    """
    if os.environ.get("LEANPOOL_NO_PIDFD"):  # our own switch, for testing the fallback
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


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


def _environ(pid: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:  # gone already, or not ours to read
        return []


def _marked_pids(mark: bytes) -> list[int]:
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

    This is how no task outlives a runner that died without cleaning up: the runner gives
    each task ``LEANPOOL_RUN=<token>`` in its environment, and descendants inherit it.
    Scans until one finds nobody left (a task may fork while we scan), or the deadline.
    """
    mark = f"{RUN_TOKEN_ENV}={token}".encode()
    killed = 0
    end = time.monotonic() + deadline_s
    while True:
        pids = _marked_pids(mark)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        if not pids or time.monotonic() > end:
            return killed
        time.sleep(0.01)

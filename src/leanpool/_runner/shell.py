"""The shell kind of child: a command task run as its own process group, its pipes drained.

A shell attempt watches up to four descriptors: its stdout and stderr pipes (drained as
they become readable, so no output size can deadlock), its stdin pipe when the task has
input, and, once it has run for ``EXIT_WATCH_AFTER_S`` (or closed its pipes, or writes
to files), a pidfd for its main process.  It is done when its main process is reaped and
its pipes are closed:

- nearly always the pipes reach EOF first (a process closes its descriptors as it
  exits), and one ``waitpid`` then reaps it;
- when the main process exits while its pipes are still open, something it left behind
  holds them (``sleep 5 & echo started``): what is in the pipes now is kept, the pipes
  are closed, and the slot is free at once;
- either way, a process group that outlives its main process is reported to the loop
  (``Host.leftovers_found``), which SIGTERMs it and SIGKILLs it after the grace, unless
  the task keeps its leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
from typing import TYPE_CHECKING, Final

from .children import CapturingChild
from .piped import PipedChild, start_piped
from .reaping import group_alive, open_pidfd, signal_group, try_reap
from .spawn import ProcessSpec, SpawnError, devnull, merged_env, start_process
from .timers import When

if TYPE_CHECKING:
    from .._protocol.tasks import CommandTask, Task
    from .children import Host, Outcome
    from .spawn import Environ

__all__ = ["ShellChild", "output_file_name", "start_shell"]

READ_CHUNK: Final = 1 << 16
"""Bytes per read of a task pipe: one pipe buffer on Linux, so one read empties it."""

BIG_PIPE: Final = 1 << 20
"""Pipe buffer and read size for a stream that filled a whole ``READ_CHUNK`` read: a task
with big output then costs 16 times fewer reads and wake-ups, and a task with small
output never pays for the extra fcntl."""

STDIN_CHUNK: Final = 1 << 16
"""Bytes per write to a task's stdin pipe; the pipe is non-blocking, so any size is safe."""

EPOLLIN: Final = select.EPOLLIN
EPOLLOUT: Final = select.EPOLLOUT
EPOLLHUP: Final = select.EPOLLHUP


def output_file_name(task_id: str | int) -> str:
    """A file name for a task's output that no two ids share: unsafe bytes become %XX,
    and a string id that reads as an integer gets its first character escaped, so that
    the ids 1 and "1" do not share a file."""
    text = str(task_id)
    if isinstance(task_id, str) and text.lstrip("-").isdigit() and text.isascii():
        return f"%{ord(text[0]):02X}{text[1:]}"
    if text.isalnum() and text.isascii():
        return text
    keep = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
    encoded = text.encode("utf-8", "surrogatepass")
    name = "".join(
        chr(b) if b in keep and not (i == 0 and b == 0x2E) else f"%{b:02X}"
        for i, b in enumerate(encoded)
    )
    return name or "%"


def start_shell(task: Task, seq: int, attempt: int, host: Host) -> ShellChild | PipedChild:
    """Start one attempt of a command task in a new session, stdin from /dev/null or a
    pipe, stdout and stderr into pipes (or files, with ``output_dir``).

    A command with captured output and no stdin goes to the C engine where it is built
    (``piped``); any other, or every one without the engine, to ``ShellChild``.

    Raises:
        SpawnError: it cannot start; OSError: out of descriptors or processes for now.
    """
    command: CommandTask = task  # type: ignore[assignment]  # CHILD_KINDS maps by class
    env = host.base_env if command.env is None else merged_env(host.base_env, command.env)
    slot = 0
    if host.slot_env is not None:
        slot = host.take_slot()
        env = merged_env(env, {host.slot_env: str(slot)})
    try:
        if host.engine is not None and host.output_dir is None and command.stdin is None:
            child: ShellChild | PipedChild = start_piped(
                host.engine, command, seq, attempt, host, None if env is host.base_env else env
            )
        else:
            child = _start_python(command, seq, attempt, host, env)
    except BaseException:
        if slot:
            host.release_slot(slot)
        raise
    child.slot = slot
    return child


def _start_python(
    command: CommandTask, seq: int, attempt: int, host: Host, env: Environ
) -> ShellChild:
    """Start a command whose pipes (or files) and exit the Python loop watches."""
    task = command
    paths = None
    if host.output_dir is not None:
        base = os.path.join(host.output_dir, _unique_name(host, output_file_name(task.id), seq))
        paths = (base + ".stdout", base + ".stderr")
    out_r = err_r = in_r = in_w = -1
    out_w = err_w = -1
    to_close_on_failure: list[int] = []
    try:
        if paths is None:
            out_r, out_w = os.pipe()
            to_close_on_failure.append(out_r)
            err_r, err_w = os.pipe()
            to_close_on_failure.append(err_r)
        else:
            out_w, err_w = _open_outputs(paths)
        if command.stdin is not None:
            in_r, in_w = os.pipe()
            to_close_on_failure.append(in_w)
        spec = ProcessSpec(
            command.argv,
            env,
            [(devnull() if in_r < 0 else in_r, 0), (out_w, 1), (err_w, 2)],
            command.cwd,
        )
        pid = start_process(spec, host.home_fd)
    except BaseException:
        for fd in to_close_on_failure:
            os.close(fd)
        raise
    finally:
        # The child now holds the only write ends, so EOF on our read ends means it is done.
        for fd in (out_w, err_w, in_r):
            if fd >= 0:
                os.close(fd)
    child = ShellChild(task, seq, attempt, pid, host, out_r, err_r)
    try:
        if paths is not None:
            child.stdout_file, child.stderr_file = paths
        else:
            host.watch(out_r, EPOLLIN, child)
            host.watch(err_r, EPOLLIN, child)
        if paths is not None:  # no pipe will tell: watch the exit at once
            child.watch_exit()
        else:  # most tasks end before they need it (see EXIT_WATCH_AFTER_S)
            host.watch_exit_later(child)
        if in_w >= 0:
            os.set_blocking(in_w, False)
            child.in_fd = in_w
            child.in_view = memoryview(command.stdin or b"")
            child.write_stdin(registered=False)
    except OSError as exc:  # the epoll set is full (max_user_watches): undo the start
        child.discard()
        if in_w >= 0 and child.in_fd < 0:
            os.close(in_w)
        raise SpawnError(126, f"cannot watch the task: {exc.strerror}") from None
    return child


def _unique_name(host: Host, name: str, seq: int) -> str:
    """name, or name.2, name.3, ... when another task of this run (an id given twice)
    has it already: no two tasks share an output file.  A retry keeps its task's."""
    names = host.output_names
    candidate, n = name, 1
    while names.setdefault(candidate, seq) != seq:
        n += 1
        candidate = f"{name}.{n}"
    return candidate


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


class ShellChild(CapturingChild):
    """One attempt of a command task; see the module docstring for its life.

    Invariants: a descriptor field is -1 once closed (or never opened); ``status`` is
    set exactly when the main process has been reaped; ``done`` is set when ``status``
    is and every descriptor is closed.
    """

    __slots__ = (
        "err_fd",
        "exit_fd",
        "in_fd",
        "in_view",
        "out_fd",
        "status",
        "stderr_file",
        "stdout_file",
        "wide",
    )

    def __init__(
        self, task: Task, seq: int, attempt: int, pid: int, host: Host, out_fd: int, err_fd: int
    ) -> None:
        super().__init__(task, seq, attempt, pid, host)
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.in_fd = -1
        self.exit_fd = -1
        self.in_view: memoryview | None = None
        self.stdout_file: str | None = None
        self.stderr_file: str | None = None
        self.status: int | None = None
        self.wide: set[int] | None = None  # pipes grown to BIG_PIPE

    # -- events ----------------------------------------------------------------------------

    def on_event(self, fd: int, events: int) -> None:
        if fd == self.exit_fd:
            self._exit_ready()
        elif fd == self.in_fd:
            self.write_stdin()
        else:
            self._read(fd, events)

    def _read(self, fd: int, events: int) -> None:
        if events & EPOLLIN:
            wide = self.wide
            size = BIG_PIPE if wide is not None and fd in wide else READ_CHUNK
            data = os.read(fd, size)
            if data:
                self.keep(fd == self.out_fd, data)
                if len(data) == READ_CHUNK and size == READ_CHUNK:
                    self._widen(fd)
                # With EPOLLHUP no writer is left; a short read then emptied the pipe, so
                # this was the last of it and a read for EOF would only cost a wake-up.
                if not events & EPOLLHUP or len(data) == size:
                    return
        # EPOLLHUP without EPOLLIN: no writer and nothing buffered, EOF without a read.
        self._close_output(fd)
        if self.out_fd < 0 and self.err_fd < 0:
            if self.status is None:
                status = try_reap(self.pid)
                if status is None:  # it closed its pipes but runs on: its exit will tell
                    if self.exit_fd < 0:
                        self.watch_exit()
                    return
                self._exited(status)
            else:
                self._finish()

    def _widen(self, fd: int) -> None:
        # A full buffer's worth in one read: more is coming.
        with contextlib.suppress(OSError):  # over the pipe quota: keep the small pipe
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, BIG_PIPE)
            if self.wide is None:
                self.wide = set()
            self.wide.add(fd)

    def write_stdin(self, *, registered: bool = True) -> None:
        """Feed the task's stdin as far as the pipe takes it; close it when all is in."""
        view = self.in_view
        assert view is not None
        try:
            while view:
                view = view[os.write(self.in_fd, view[:STDIN_CHUNK]) :]
        except BlockingIOError:
            self.in_view = view
            if not registered:
                self.host.watch(self.in_fd, EPOLLOUT, self)
            return
        except BrokenPipeError:  # the task does not read its stdin: fine
            pass
        if registered:
            self.host.forget(self.in_fd)
        else:
            os.close(self.in_fd)
        self.in_fd = -1
        self.in_view = None

    def _close_output(self, fd: int) -> None:
        self.host.forget(fd)
        if fd == self.out_fd:
            self.out_fd = -1
        else:
            self.err_fd = -1

    # -- the main process's exit -----------------------------------------------------------

    @property
    def exit_watched(self) -> bool:
        """Whether its main process's exit will be seen without its pipes' EOF."""
        return self.exit_fd >= 0 or self.status is not None or not self.host.pidfds

    def watch_exit(self) -> None:
        """Watch the main process's exit through a pidfd (or leave it to SIGCHLD)."""
        if self.exit_watched:
            return
        try:
            self.exit_fd = open_pidfd(self.pid)
        except OSError:  # out of descriptors: look again shortly
            self.host.after(0.01, When.REAP, self)
            return
        self.host.watch(self.exit_fd, EPOLLIN, self)

    def _exit_ready(self) -> None:
        status = try_reap(self.pid)
        if status is not None:
            self._exited(status)

    def on_exit(self, status: int) -> None:
        if self.status is None:
            self._exited(status)

    def _exited(self, status: int) -> None:
        """The main process is reaped: keep what its pipes hold now, and let go of them.

        Pipes still open after a drain are held by something it left running; the loop
        hears of leftovers whether they hold pipes or not (one killpg probe).
        """
        self.status = status
        if self.exit_fd >= 0:
            self.host.forget(self.exit_fd)
            self.exit_fd = -1
        held = False
        for fd in (self.out_fd, self.err_fd):
            if fd >= 0:
                held = self._drain(fd) or held
        if self.in_fd >= 0:
            self.host.forget(self.in_fd)
            self.in_fd = -1
            self.in_view = None
        if held or group_alive(self.pid):
            self.host.leftovers_found(self)
        self._finish()

    def _drain(self, fd: int) -> bool:
        """Read what fd holds now, then close it; True if a writer still held it.

        Reads at most one pipe's capacity: a leftover that keeps writing (``yes &``)
        must not keep the loop here.
        """
        os.set_blocking(fd, False)
        try:
            budget = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except OSError:
            budget = BIG_PIPE
        held = True
        try:
            while budget > 0:
                data = os.read(fd, budget)
                if not data:
                    held = False
                    break
                budget -= len(data)
                if not self.abandoned:
                    self.keep(fd == self.out_fd, data)
        except BlockingIOError:
            pass
        self._close_output(fd)
        return held

    def _finish(self) -> None:
        self.done = True

    def discard(self) -> None:
        """Undo a start that could not be watched: kill, reap, close everything."""
        signal_group(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.status = -signal.SIGKILL
        for fd in (self.out_fd, self.err_fd, self.exit_fd, self.in_fd):
            if fd >= 0:
                if fd in self.host.watched:
                    self.host.forget(fd)
                else:
                    os.close(fd)
        self.out_fd = self.err_fd = self.exit_fd = self.in_fd = -1
        self.done = True

    # -- stopping --------------------------------------------------------------------------

    def abandon(self) -> None:
        """No output is wanted: close the pipes now, so that a descendant that escaped the
        group cannot keep the runner waiting for EOF."""
        super().abandon()
        for fd in (self.out_fd, self.err_fd):
            if fd >= 0:
                self._close_output(fd)
        self.watch_exit()  # no pipe is left to tell when it ends

    def outcome(self) -> Outcome:
        """How it ended (the output moves to the Outcome)."""
        assert self.status is not None
        result = self.captured(self.status)
        result.stdout_file = self.stdout_file
        result.stderr_file = self.stderr_file
        return result

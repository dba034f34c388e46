"""The seam between the loop and the kinds of child it runs.

The loop does not know what a shell task is.  It starts an attempt of a task through the
kind registered for the task's class (``kinds.CHILD_KINDS``), routes every event on a
descriptor the child asked to watch to ``Child.on_event``, signals it on deadlines, and
once ``Child.done`` turns the child's ``Outcome`` into a result record.  A kind of child
is one module implementing ``Child`` and a line in ``kinds.py``: the shell kind
(``shell.py``) is the first.

What a child may ask of the loop is the ``Host`` protocol: watch a descriptor, forget
one, a deadline, and "my process group outlived me".
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from .reaping import signal_group

if TYPE_CHECKING:
    from collections.abc import Container

    from .._protocol.tasks import Task
    from .calls import WorkerPool
    from .piped import Engine
    from .spawn import Environ
    from .timers import When

__all__ = ["CapturingChild", "Child", "ChildKind", "Host", "Outcome", "Watcher"]


class Watcher(Protocol):
    """What owns a watched descriptor: a child, or a worker process that outlives the
    attempts it runs.  Only a ``Child`` ever becomes ``done``."""

    done: bool

    def on_event(self, fd: int, events: int) -> None:
        """An event on fd."""


class Host(Protocol):
    """What the loop offers a child."""

    pidfds: bool
    """Whether exits are watched through pidfds (else the loop reaps on SIGCHLD and
    calls ``Child.on_exit``)."""
    base_env: Environ
    home_fd: int
    max_output: int | None
    output_dir: str | None
    output_names: dict[str, int]
    """With ``output_dir``: each output file name given in this run, to its task's seq."""
    spill_dir: str | None
    engine: Engine | None
    """The C engine that starts and drains commands (``piped``), or None: Python does."""
    slot_env: str | None
    """A variable that tells each command task its job slot (1 to ``parallel``, none
    shared by two tasks running at once), as GNU parallel's ``$PARALLEL_JOBSLOT``."""

    @property
    def watched(self) -> Container[int]:
        """The descriptors being watched."""

    def watch(self, fd: int, events: int, owner: Watcher) -> None:
        """Route events on fd to owner.on_event until ``forget(fd)``."""

    def forget(self, fd: int) -> None:
        """Stop watching fd and close it."""

    def unwatch(self, fd: int) -> None:
        """Stop watching fd; keep it open."""

    def watch_exit_later(self, child: Child) -> None:
        """Call ``child.watch_exit()`` if it still runs ``EXIT_WATCH_AFTER_S`` from now."""

    def after(self, delay: float, what: When, child: Child) -> None:
        """A deadline about child (``When.REAP``: call ``child.watch_exit()`` again)."""

    def leftovers_found(self, child: Child) -> None:
        """child's main process ended and left processes in its group: they get SIGTERM,
        then SIGKILL after the grace, unless the task keeps its leftovers."""

    def take_slot(self) -> int:
        """The lowest free job slot; ``Child.slot`` gives it back when the child ends."""

    def release_slot(self, slot: int) -> None:
        """Give back a slot taken for a start that failed."""

    def began(self, child: Child) -> None:
        """child, started with ``running`` false, runs now: its timeout starts."""

    def attempt_over(self, child: Child) -> None:
        """child is done, found out of an event routed to another owner (a worker)."""

    def worker_pool(self) -> WorkerPool:
        """The run's workers, for calls (started as calls need them)."""

    def worker_failed(self, message: str) -> None:
        """A worker could not start at all: the run ends with this error."""


class Outcome:
    """How an attempt ended, in the terms every kind shares; ``results`` makes the record.

    Attributes:
        status: exit code, minus the signal number for a signal (as subprocess).
        stdout, stderr: the bytes kept (``max_output`` may have cut them).
        stdout_truncated, stderr_truncated: bytes were dropped past ``max_output``.
        stdout_file, stderr_file: where the output went instead, with ``output_dir``.
        fields: what the kind adds to the result record (a call's ``value``, ``error``).
    """

    __slots__ = (
        "fields",
        "status",
        "stderr",
        "stderr_file",
        "stderr_truncated",
        "stdout",
        "stdout_file",
        "stdout_truncated",
    )

    def __init__(self, status: int, stdout: bytes = b"", stderr: bytes = b"") -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_truncated = False
        self.stderr_truncated = False
        self.stdout_file: str | None = None
        self.stderr_file: str | None = None
        self.fields: dict[str, object] | None = None


class Child:
    """One started attempt of a task, of some kind.

    Life: ``start`` (the kind's constructor) -> events routed to ``on_event`` (and
    ``on_exit`` on the SIGCHLD path) -> ``done`` -> ``outcome()``.  ``done`` becomes true
    once: the attempt is over and the child holds nothing the loop must still watch for
    it.  For the shell kind that means its main process is reaped and its pipes are
    closed; a kind whose process outlives an attempt (a warm worker running many calls)
    will need the loop to key attempts apart from processes (``active`` is keyed by
    pid today, and a timeout signals the pid's whole group).

    Attributes:
        task, seq, attempt: what runs (seq: the task's position in the input).
        pid: the main process, leader of its own process group.
        timed_out: the loop's timeout fired (set before it signals).
        abandoned: the run is stopping and wants no result of this attempt.
        cancelled: the caller cancelled this task while it ran.
        running: it runs now, so its timeout starts; a kind that must wait (a call
            whose worker is still starting) sets it later and tells ``Host.began``.
    """

    __slots__ = (
        "abandoned",
        "attempt",
        "cancelled",
        "done",
        "pid",
        "running",
        "seq",
        "slot",
        "started",
        "task",
        "timed_out",
    )

    def __init__(self, task: Task, seq: int, attempt: int, pid: int) -> None:
        self.task = task
        self.seq = seq
        self.attempt = attempt
        self.pid = pid
        self.started = time.monotonic()
        self.timed_out = False
        self.abandoned = False
        self.cancelled = False
        self.running = True
        self.done = False
        self.slot = 0

    def on_event(self, fd: int, events: int) -> None:
        """An event on one of the descriptors this child watches."""
        raise NotImplementedError

    def on_exit(self, status: int) -> None:
        """The main process exited with status (already reaped by the loop)."""
        raise NotImplementedError

    @property
    def exit_watched(self) -> bool:
        """Whether the main process's exit will be seen whatever its pipes do."""
        raise NotImplementedError

    def watch_exit(self) -> None:
        """Watch for the main process's exit (now, after ``When.REAP``, or when the loop's
        ``When.WATCH_EXITS`` finds the child still running)."""
        raise NotImplementedError

    def abandon(self) -> None:
        """The run is stopping: drop the output now; the loop signals the group."""
        self.abandoned = True
        self.timed_out = False

    def signal(self, sig: int) -> None:
        """Signal everything this attempt runs: its whole process group."""
        signal_group(self.pid, sig)

    def outcome(self) -> Outcome:
        """How it ended; only once ``done``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<{type(self).__name__} of task {self.task.id!r}, pid {self.pid}, {state}>"


class CapturingChild(Child):
    """A child whose stdout and stderr are collected in memory, up to ``max_output``.

    Invariant: ``out_size``/``err_size`` are the bytes kept in ``out_chunks``/``err_chunks``;
    the ``*_truncated`` flags say that bytes past ``max_output`` were dropped.
    """

    __slots__ = (
        "err_chunks",
        "err_size",
        "err_truncated",
        "host",
        "out_chunks",
        "out_size",
        "out_truncated",
    )

    def __init__(self, task: Task, seq: int, attempt: int, pid: int, host: Host) -> None:
        super().__init__(task, seq, attempt, pid)
        self.host = host
        self.out_chunks: list[bytes] = []
        self.err_chunks: list[bytes] = []
        self.out_size = 0
        self.err_size = 0
        self.out_truncated = False
        self.err_truncated = False

    def keep(self, is_out: bool, data: bytes) -> None:
        """Keep data read from the child's stdout (is_out) or stderr."""
        cap = self.host.max_output
        if is_out:
            if cap is not None and self.out_size + len(data) > cap:
                data = data[: max(0, cap - self.out_size)]
                self.out_truncated = True
            self.out_size += len(data)
            self.out_chunks.append(data)
        else:
            if cap is not None and self.err_size + len(data) > cap:
                data = data[: max(0, cap - self.err_size)]
                self.err_truncated = True
            self.err_size += len(data)
            self.err_chunks.append(data)

    def captured(self, status: int) -> Outcome:
        """An Outcome holding what was kept; the chunks move to it, so that a deadline
        that still refers to this child does not keep its output alive."""
        result = Outcome(status, b"".join(self.out_chunks), b"".join(self.err_chunks))
        self.out_chunks = []
        self.err_chunks = []
        result.stdout_truncated = self.out_truncated
        result.stderr_truncated = self.err_truncated
        return result


class ChildKind(Protocol):
    """A kind of child: how to start one attempt of a task (``kinds.CHILD_KINDS``).

    Raises:
        SpawnError: the task cannot start; the loop makes it a failed result.
        OSError: out of descriptors or processes for now; the loop tries again later.
    """

    def __call__(self, task: Task, seq: int, attempt: int, host: Host) -> Child: ...

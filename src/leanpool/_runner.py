"""The lean runner: the process that starts, watches and reports every task.

::

    caller (big)                        runner (lean)                       tasks
    TaskRunner.add() ──► spool.jsonl ─┐
    TaskRunner.run() ──► spawn ───────┴─► validate, then stream spool ─► posix_spawn ─► sh -c CMD
                         stdin pipe ─────► EOF: caller gone, kill all       (own session each)
    Result ◄── decode ◄─ stdout JSONL ◄── one epoll loop ◄────────────── pipes, pidfds
                                          └─► journal (O_APPEND, fsync'd)

The caller starts this module with ``sys.executable -I -S`` through a bootstrap that
imports ``leanpool._runner`` without running ``leanpool/__init__`` (see
``runner_command``): the runner imports only the standard library and the stdlib-only
modules ``_errors``, ``_task``, ``_wire``, ``_spool``, ``_journal`` and ``_supervise``.
Its memory does not grow with the number of tasks: it holds the running tasks only.

One epoll loop does everything, without a sleep-and-poll tick:

- the task pipes are drained as they become readable, so no output size can deadlock;
- a task is finished when both of its pipes reached EOF *and* its status is reaped.  A
  child closes its pipes by exiting, so one ``waitpid(pid, WNOHANG)`` at EOF nearly always
  reaps it; for the rest (and for tasks whose output goes to files) a pidfd joins the
  epoll set.  On kernels without pidfds, SIGCHLD wakes the loop through
  ``signal.set_wakeup_fd`` and ``waitpid(-1, WNOHANG)`` reaps;
- a heap of deadlines drives timeouts (SIGTERM to the task's group, SIGKILL after the
  grace period), retry delays, and back-off when out of descriptors or processes;
- EOF on stdin means the caller is gone; SIGINT, SIGTERM and SIGHUP mean stop.  Either way
  every task group is signalled and reaped before the runner exits;
- results are written to stdout without blocking the loop (a slow reader pauses new
  starts instead), and to the journal first when there is one.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import heapq
import json
import os
import resource
import select
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Final, TypedDict, cast

from ._errors import JournalError, TaskFileError
from ._journal import Journal
from ._spool import TaskFormat, iter_tasks
from ._supervise import (
    Child,
    SpawnError,
    pidfds_work,
    reap_ready,
    signal_group,
    spawn,
    try_reap,
)
from ._wire import control_line, decode_output, encode_line

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._task import Task

__all__ = ["RunnerConfig", "main"]

READ_CHUNK: Final = 1 << 16
"""Bytes per read of a task pipe: one pipe buffer on Linux, so one read empties it."""

SPILL_OVER: Final = 1 << 16
"""Bytes from which an output goes to a spill file rather than into the result's JSON:
escaping and parsing megabytes of JSON costs ten times what a file write and read do,
and an output this small costs less inline than a file's create, write, read and unlink."""

BIG_PIPE: Final = 1 << 20
"""Pipe buffer and read size for a stream that filled a whole ``READ_CHUNK`` read: a task
with big output then costs 16 times fewer reads and wake-ups, and a task with small
output never pays for the extra fcntl."""

STDIN_CHUNK: Final = 1 << 16
"""Bytes per write to a task's stdin pipe; the pipe is non-blocking, so any size is safe."""

OUTPUT_BACKLOG: Final = 8 << 20
"""Bytes of results waiting for a slow caller before the runner stops starting tasks:
bounds the runner's memory when the caller does not keep up, without blocking the loop."""

INTERRUPT_GRACE_S: Final = 0.5
"""Seconds between SIGTERM and SIGKILL when the whole run is stopped (Ctrl-C, caller gone,
halt now): short, because whoever stopped the run is waiting for it to end."""

BACKOFF_S: Final = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 2.0, 2.0)
"""Waits before trying again to start a task when the system is out of descriptors or
processes and no running task can free any; after the last one the task fails."""

_TERM, _KILL, _RETRY, _WAKE, _REAP = range(5)  # timer kinds
EPOLLIN: Final = select.EPOLLIN
EPOLLOUT: Final = select.EPOLLOUT
EPOLLHUP: Final = select.EPOLLHUP


class RunnerConfig(TypedDict):
    """The runner's single command-line argument, as JSON."""

    tasks: str
    format: TaskFormat
    parallel: int
    timeout: float | None
    kill_grace: float
    max_output: int | None
    output_dir: str | None
    retries: int
    retry_delay: float
    halt: int | None
    halt_now: bool
    journal: str | None
    resume: bool
    ordered: bool
    cleanup_dir: str | None
    """A private directory of the caller's, removed by the runner if the caller dies."""
    spill_dir: str | None
    """Where to put a stream of ``SPILL_OVER`` bytes or more, as a raw file named in the
    result instead of inline JSON; None (the CLI) keeps every output inline."""


def _file_name(task_id: str | int) -> str:
    """A file name for a task's output that no two ids share: unsafe bytes become %XX."""
    text = str(task_id)
    if text.isalnum() and text.isascii():
        return text
    keep = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
    encoded = text.encode("utf-8", "surrogatepass")
    name = "".join(
        chr(b) if b in keep and not (i == 0 and b == 0x2E) else f"%{b:02X}"
        for i, b in enumerate(encoded)
    )
    return name or "%"


class _Runner:
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.parallel = config["parallel"]
        self.epoll = select.epoll()
        self.active: dict[int, Child] = {}  # pid -> unfinished child
        self.by_fd: dict[int, Child] = {}
        self.big_fds: set[int] = set()
        self.timers: list[tuple[float, int, int, object]] = []
        self.timer_seq = 0
        self.ready: collections.deque[tuple[Task, int, int]] = collections.deque()
        self.retries_pending = 0
        self.tasks: Iterator[Task] = iter(())
        self.next_seq = 0
        self.exhausted = False
        self.stopping = False
        self.interrupted = False
        self.caller_gone = False
        self.halted = False
        self.to_run = 0
        self.completed = 0
        self.failed = 0
        self.stop_signal = 0
        self.stopped_by: str | None = None
        self.out_buf = bytearray()
        self.out_pos = 0  # bytes of out_buf already written
        self.watching_stdout = False
        self.stdout_pollable = True
        self.ordered_pending: dict[int, bytes] = {}
        self.next_emit = 0
        self.journal: Journal | None = None
        # Encoded once: os.environ would be decoded and re-encoded at every spawn.
        self.base_env = dict(os.environb)
        self.home_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.backoff_step = 0
        self.pidfds = pidfds_work()

    # -- set-up --------------------------------------------------------------------------

    def _install_signals(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        if not self.pidfds:
            signal.signal(signal.SIGCHLD, _ignore_signal)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # A signal ignored by whoever started us stays ignored, as shells do.
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._on_stop_signal)
        self.epoll.register(wake_r, EPOLLIN)
        # EOF on stdin means the caller is gone; a stdin that is not a pipe cannot say so.
        with contextlib.suppress(OSError):
            self.epoll.register(0, EPOLLIN)
        os.set_blocking(1, False)
        with contextlib.suppress(OSError):  # not a pipe, or over the pipe quota: keep it
            fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, BIG_PIPE)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum

    def _raise_fd_limit(self) -> None:
        # Each running task holds up to three pipe ends; raise the soft limit only when
        # the default would not do, since tasks inherit it.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 3 * self.parallel + 64
        if soft != resource.RLIM_INFINITY and soft < need:
            new = need if hard == resource.RLIM_INFINITY else min(need, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))

    def _validate(self, done: set[str | int]) -> tuple[int, int]:
        """The first pass: refuse the whole file at its first bad line; count the tasks."""
        total = skipped = 0
        check_duplicates = self.config["journal"] is not None
        first_line: dict[str | int, int] = {}
        for task in iter_tasks(self.config["tasks"], self.config["format"]):
            total += 1
            if check_duplicates:
                # A journal names results by id: two tasks with one id cannot be told apart.
                seen = first_line.setdefault(task.id, task.line)
                if seen != task.line:
                    raise TaskFileError(
                        task.line,
                        f"id {task.id!r} was already used on line {seen}; "
                        "ids must be unique when a journal is kept",
                    )
            if task.id in done:
                skipped += 1
        return total, skipped

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        self._install_signals()
        done: set[str | int] = set()
        if config["journal"] is not None:
            self.journal = Journal(config["journal"], resume=config["resume"])
            done = self.journal.done
        total, skipped = self._validate(done)
        self.to_run = total - skipped
        self._raise_fd_limit()
        self._emit(control_line("start", total=total, skipped=skipped))
        all_tasks = iter_tasks(config["tasks"], config["format"])
        self.tasks = (t for t in all_tasks if t.id not in done) if done else all_tasks
        try:
            self._loop()
        finally:
            self._kill_all()
        self._flush_ordered()
        self._emit(
            control_line(
                "end",
                completed=self.completed,
                failed=self.failed,
                unfinished=self.to_run - self.completed,
                halted=self.halted,
                interrupted=self.interrupted,
                stopped_by=self.stopped_by,
            )
        )
        if self.journal is not None:
            self.journal.close()
        self._flush_output(final=True)
        if self.caller_gone and config["cleanup_dir"]:
            _remove_dir(config["cleanup_dir"])
        return 0

    def _loop(self) -> None:
        poll = self.epoll.poll
        by_fd = self.by_fd
        while True:
            if self.stop_signal:  # e.g. a Ctrl-C while the task file was being validated
                self._on_wake()
            if not self.stopping:
                self._fill()
            if not self.active and (self.stopping or (self.exhausted and not self.pending())):
                return
            for fd, events in poll(self._poll_timeout()):
                child = by_fd.get(fd)
                if child is not None:
                    if fd == child.exit_fd:
                        self._on_exit(child)
                    elif fd == child.in_fd:
                        self._write_stdin(child)
                    else:
                        self._read(child, fd, events)
                elif fd == self.wake_r:
                    self._on_wake()
                elif fd == 0:
                    self._on_control()
                elif fd == 1:
                    self._flush_output()
            if self.timers:
                self._fire_timers()
            if self.out_buf:
                self._flush_output()

    def pending(self) -> bool:
        return bool(self.ready) or self.retries_pending > 0

    def _poll_timeout(self) -> float:
        if not self.timers:
            return -1
        return max(0.0, self.timers[0][0] - time.monotonic())

    def _add_timer(self, when: float, kind: int, subject: object) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, (when, self.timer_seq, kind, subject))

    # -- starting tasks ------------------------------------------------------------------

    def _fill(self) -> None:
        while len(self.active) < self.parallel and len(self.out_buf) < OUTPUT_BACKLOG:
            if self.ready:
                task, seq, attempt = self.ready.popleft()
            else:
                if self.exhausted:
                    return
                fresh = next(self.tasks, None)
                if fresh is None:
                    self.exhausted = True
                    return
                task = fresh
                seq = self.next_seq
                self.next_seq += 1
                attempt = 1
            if not self._start(task, seq, attempt):
                return

    def _start(self, task: Task, seq: int, attempt: int) -> bool:
        """Start one attempt; False when the system is out of resources for now."""
        output_dir = self.config["output_dir"]
        paths = None
        if output_dir is not None:
            base = os.path.join(output_dir, _file_name(task.id))
            paths = (base + ".stdout", base + ".stderr")
        try:
            child = spawn(
                task, seq, attempt, base_env=self.base_env, home_fd=self.home_fd, output_paths=paths
            )
        except SpawnError as exc:
            self._unstarted(task, seq, attempt, exc.status, exc.message)
            return True
        except OSError as exc:  # EMFILE, ENFILE, EAGAIN, ENOMEM: out of resources
            self.ready.appendleft((task, seq, attempt))
            return self._throttle(task, seq, attempt, exc)
        self.backoff_step = 0
        self.active[child.pid] = child
        register = self.epoll.register
        if child.out_fd >= 0:
            self.by_fd[child.out_fd] = child
            register(child.out_fd, EPOLLIN)
            self.by_fd[child.err_fd] = child
            register(child.err_fd, EPOLLIN)
        else:  # output goes to files: only its exit can tell us it is done
            self._await_exit(child)
        if child.in_fd >= 0:
            self.by_fd[child.in_fd] = child
            self._write_stdin(child, registered=False)
        timeout = task.timeout if task.timeout is not None else self.config["timeout"]
        if timeout is not None:
            self._add_timer(child.started + timeout, _TERM, child)
        return True

    def _throttle(self, task: Task, seq: int, attempt: int, exc: OSError) -> bool:
        if self.active:
            # Running tasks will free descriptors and processes: run fewer at once.
            if len(self.active) < self.parallel:
                self.parallel = len(self.active)
                _warn(f"{exc.strerror}: now running at most {self.parallel} tasks at once")
            return False
        if self.backoff_step < len(BACKOFF_S):
            self._add_timer(time.monotonic() + BACKOFF_S[self.backoff_step], _WAKE, None)
            self.backoff_step += 1
            return False
        # Nothing of ours holds the resource and waiting did not help: fail this task.
        self.ready.popleft()
        self.backoff_step = 0
        self._unstarted(task, seq, attempt, 126, f"cannot start: {exc.strerror}")
        return True

    def _unstarted(self, task: Task, seq: int, attempt: int, status: int, error: str) -> None:
        """The result of a task that could not start, unless it has retries left."""
        if self._retry(task, seq, attempt):
            return
        record: dict[str, object] = {
            "id": task.id,
            "status": status,
            "ok": False,
            "duration": 0.0,
            "stdout": "",
            "stderr": "",
            "error": error,
        }
        if attempt > 1:
            record["attempts"] = attempt
        self._finish(record, seq, ok=False)

    # -- events --------------------------------------------------------------------------

    def _write_stdin(self, child: Child, *, registered: bool = True) -> None:
        view = child.in_view
        assert view is not None
        try:
            while view:
                view = view[os.write(child.in_fd, view[:STDIN_CHUNK]) :]
        except BlockingIOError:
            child.in_view = view
            if not registered:
                self.epoll.register(child.in_fd, EPOLLOUT)
            return
        except BrokenPipeError:
            pass  # the task does not read its stdin: not an error of ours
        self._close_stdin(child)

    def _close_stdin(self, child: Child) -> None:
        self._close_pipe(child.in_fd)
        child.in_fd = -1
        child.in_view = None

    def _read(self, child: Child, fd: int, events: int) -> None:
        if events & EPOLLIN:
            big = fd in self.big_fds
            size = BIG_PIPE if big else READ_CHUNK
            data = os.read(fd, size)
            if data:
                if not big and len(data) == READ_CHUNK:
                    self.big_fds.add(fd)
                    with contextlib.suppress(OSError):  # over the user's pipe quota: keep 64 KiB
                        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, BIG_PIPE)
                self._keep(child, fd == child.out_fd, data)
                # With EPOLLHUP no writer is left; a short read then emptied the pipe, so
                # this was the last of it and a read for EOF would only cost a wake-up.
                if not events & EPOLLHUP or len(data) == size:
                    return
        # EPOLLHUP without EPOLLIN: no writer and nothing buffered, EOF without a read.
        self._close_pipe(fd)
        if fd == child.out_fd:
            child.out_fd = -1
        else:
            child.err_fd = -1
        if child.pipes_closed:
            if child.status is None:
                self._await_exit(child)
            else:
                self._complete(child)

    def _await_exit(self, child: Child) -> None:
        """Finish a child whose pipes are closed, as soon as it has exited.

        Usually it already has (closing its pipes was part of exiting): one waitpid.
        Otherwise a pidfd wakes the loop when it does, or SIGCHLD where there are none.
        """
        status = try_reap(child.pid)
        if status is not None:
            child.status = status
            self._complete(child)
        elif self.pidfds:
            try:
                child.exit_fd = os.pidfd_open(child.pid)
            except OSError:  # out of descriptors: look again shortly
                self._add_timer(time.monotonic() + 0.01, _REAP, child)
                return
            self.by_fd[child.exit_fd] = child
            self.epoll.register(child.exit_fd, EPOLLIN)

    def _on_exit(self, child: Child) -> None:
        self._close_pipe(child.exit_fd)
        child.exit_fd = -1
        self._await_exit(child)

    def _keep(self, child: Child, is_out: bool, data: bytes) -> None:
        cap = self.config["max_output"]
        if is_out:
            if cap is not None and child.out_size + len(data) > cap:
                data = data[: max(0, cap - child.out_size)]
                child.out_truncated = True
            child.out_size += len(data)
            child.out_chunks.append(data)
        else:
            if cap is not None and child.err_size + len(data) > cap:
                data = data[: max(0, cap - child.err_size)]
                child.err_truncated = True
            child.err_size += len(data)
            child.err_chunks.append(data)

    def _close_pipe(self, fd: int) -> None:
        # Unregister before closing: closing our descriptor does not always remove it from
        # the epoll set.  A task started a moment ago may still hold a copy of it, since
        # the vfork parent resumes at exec_mmap, before the child closes its
        # close-on-exec descriptors; the registration would then outlive our close and
        # report a later pipe that reuses the number as hung up (it did, in the
        # benchmark: a few results in a thousand came back empty).
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)
        del self.by_fd[fd]
        self.big_fds.discard(fd)
        os.close(fd)

    def _on_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        if self.stop_signal:
            self.stopped_by = _signal_name(self.stop_signal)
            _warn(f"{self.stopped_by}: stopping every task")
            self.stop_signal = 0
            self._stop(interrupted=True)
        if self.pidfds:
            return
        active = self.active
        for pid, status in reap_ready():
            child = active.get(pid)
            if child is None:
                continue
            child.status = status
            if child.pipes_closed:
                self._complete(child)

    def _on_control(self) -> None:
        try:
            data = os.read(0, 512)
        except OSError:
            data = b""
        if not data:  # the caller closed our stdin or died: nobody will read results
            self.epoll.unregister(0)
            self.caller_gone = True
            self.stopped_by = self.stopped_by or "caller"
            self._stop(interrupted=True)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, kind, subject = heapq.heappop(timers)
            if kind == _RETRY:
                self.retries_pending -= 1
                if not self.stopping:
                    self.ready.append(cast("tuple[Task, int, int]", subject))
                continue
            if kind == _WAKE:
                continue  # _fill runs at the top of the loop
            child = subject
            assert isinstance(child, Child)
            if self.active.get(child.pid) is not child:
                continue  # finished meanwhile
            if kind == _REAP:
                if child.exit_fd < 0:
                    self._await_exit(child)
            elif kind == _TERM:
                child.timed_out = not child.abandoned
                signal_group(child.pid, signal.SIGTERM)
                grace = INTERRUPT_GRACE_S if child.abandoned else self.config["kill_grace"]
                self._add_timer(now + grace, _KILL, child)
            else:
                signal_group(child.pid, signal.SIGKILL)

    # -- finishing -----------------------------------------------------------------------

    def _complete(self, child: Child) -> None:
        del self.active[child.pid]
        if child.in_fd >= 0:
            self._close_stdin(child)
        if child.exit_fd >= 0:
            self._close_pipe(child.exit_fd)
            child.exit_fd = -1
        if child.abandoned:
            return
        status = child.status
        assert status is not None
        ok = status == 0 and not child.timed_out
        if not ok and self._retry(child.task, child.seq, child.attempt):
            return
        record: dict[str, object] = {
            "id": child.task.id,
            "status": status,
            "ok": ok,
            "duration": round(time.monotonic() - child.started, 6),
        }
        journal_line = None
        if child.out_path is not None:
            record["stdout"] = record["stderr"] = ""
            record["stdout_file"] = child.out_path
            record["stderr_file"] = child.err_path
        else:
            out = b"".join(child.out_chunks)
            err = b"".join(child.err_chunks)
            spill = self.config["spill_dir"]
            if spill is not None and (len(out) >= SPILL_OVER or len(err) >= SPILL_OVER):
                if self.journal is not None:  # the journal keeps every byte inline
                    full = dict(record)
                    _put_output(full, "stdout", out)
                    _put_output(full, "stderr", err)
                    journal_line = encode_line(self._finish_fields(full, child, status))
                base = os.path.join(spill, f"{child.seq}.{child.attempt}")
                _spill_output(record, "stdout", out, base)
                _spill_output(record, "stderr", err, base)
            else:
                record["stdout"], out_b64 = decode_output(out)
                record["stderr"], err_b64 = decode_output(err)
                if out_b64 is not None:
                    record["stdout_b64"] = out_b64
                if err_b64 is not None:
                    record["stderr_b64"] = err_b64
        if not ok or child.attempt > 1 or child.out_truncated or child.err_truncated:
            self._finish_fields(record, child, status)
        self._finish(record, child.seq, ok, journal_line)

    @staticmethod
    def _finish_fields(record: dict[str, object], child: Child, status: int) -> dict[str, object]:
        """Add the fields that only say something when a task failed or was cut short."""
        if child.out_truncated:
            record["stdout_truncated"] = True
        if child.err_truncated:
            record["stderr_truncated"] = True
        if child.timed_out:
            record["timed_out"] = True
        if status < 0:
            record["signal"] = _signal_name(-status)
        if child.attempt > 1:
            record["attempts"] = child.attempt
        return record

    def _retry(self, task: Task, seq: int, attempt: int) -> bool:
        """Schedule another attempt of a failed task if it has retries left."""
        if attempt > self.config["retries"] or self.stopping:
            return False
        self.retries_pending += 1
        when = time.monotonic() + self.config["retry_delay"]
        self._add_timer(when, _RETRY, (task, seq, attempt + 1))
        return True

    def _finish(
        self, record: dict[str, object], seq: int, ok: bool, journal_line: bytes | None = None
    ) -> None:
        """Journal, count and emit one final result."""
        line = encode_line(record)
        if self.journal is not None:
            self.journal.append(journal_line or line)
        self.completed += 1
        if not ok:
            self.failed += 1
        if self.config["ordered"]:
            self.ordered_pending[seq] = line
            while self.next_emit in self.ordered_pending:
                self._emit(self.ordered_pending.pop(self.next_emit))
                self.next_emit += 1
        else:
            self._emit(line)
        halt = self.config["halt"]
        if not ok and halt is not None and self.failed >= halt and not self.halted:
            self.halted = True
            _warn(f"{self.failed} task(s) failed: starting no more tasks")
            self._stop(interrupted=False, kill=self.config["halt_now"])

    def _flush_ordered(self) -> None:
        # Tasks that never finished (halt, interrupt) leave gaps; emit the rest in order.
        for seq in sorted(self.ordered_pending):
            self._emit(self.ordered_pending[seq])
        self.ordered_pending.clear()

    def _stop(self, *, interrupted: bool, kill: bool = True) -> None:
        """Start no more tasks; with kill, signal every running group and drop its result."""
        self.stopping = True
        self.interrupted = self.interrupted or interrupted
        self.ready.clear()
        if not kill:
            return
        now = time.monotonic()
        for child in list(self.active.values()):
            if child.abandoned:
                continue
            child.abandoned = True
            child.timed_out = False
            # Its output is not wanted: close the pipes now, so that a descendant that
            # escaped the group cannot keep the runner waiting for EOF.
            for fd in (child.out_fd, child.err_fd):
                if fd >= 0:
                    self._close_pipe(fd)
            child.out_fd = child.err_fd = -1
            signal_group(child.pid, signal.SIGTERM)
            self._add_timer(now + INTERRUPT_GRACE_S, _KILL, child)
            if child.status is not None:
                self._complete(child)
            elif child.exit_fd < 0:
                self._await_exit(child)

    def _kill_all(self) -> None:
        """Last resort on the way out: no task group outlives the runner."""
        for pid in self.active:
            signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while self.active and time.monotonic() < deadline:
            for pid, _ in reap_ready():
                self.active.pop(pid, None)
            if self.active:
                time.sleep(0.005)  # only on a failure path: children were just SIGKILLed

    # -- output --------------------------------------------------------------------------

    def _emit(self, line: bytes) -> None:
        self.out_buf += line

    def _flush_output(self, *, final: bool = False) -> None:
        buf = self.out_buf
        if final:
            os.set_blocking(1, True)
        while self.out_pos < len(buf):
            try:
                if not self.out_pos:
                    self.out_pos = os.write(1, buf)
                    continue
                with memoryview(buf) as view:  # released at once, so buf may grow again
                    self.out_pos += os.write(1, view[self.out_pos :])
            except BlockingIOError:
                if not self.watching_stdout and self.stdout_pollable:
                    try:
                        self.epoll.register(1, EPOLLOUT)
                        self.watching_stdout = True
                    except OSError:
                        self.stdout_pollable = False
                        os.set_blocking(1, True)
                return
            except BrokenPipeError:  # the caller is gone
                self.caller_gone = True
                self.stopped_by = self.stopped_by or "caller"
                if not self.interrupted:
                    self._stop(interrupted=True)
                break
        buf.clear()
        self.out_pos = 0
        if self.watching_stdout:
            self.epoll.unregister(1)
            self.watching_stdout = False


def _put_output(record: dict[str, object], name: str, data: bytes) -> None:
    text, b64 = decode_output(data)
    record[name] = text
    if b64 is not None:
        record[name + "_b64"] = b64


def _spill_output(record: dict[str, object], name: str, data: bytes, base: str) -> None:
    """Inline a small output; write a big one to a file the caller reads and removes."""
    if len(data) < SPILL_OVER:
        _put_output(record, name, data)
        return
    path = f"{base}.{name}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError:  # a full disk: the pipe to the caller still takes it, only slower
        with contextlib.suppress(OSError):
            os.unlink(path)
        _put_output(record, name, data)
        return
    record[name] = ""
    record[name + "_spill"] = path


def _remove_dir(path: str) -> None:
    """Remove the caller's flat temporary directory (no shutil: the runner stays lean)."""
    try:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
    except OSError:
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def _ignore_signal(_signum: int, _frame: object) -> None:
    """A Python-level SIGCHLD handler, so that the wakeup fd gets written."""


def _warn(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"leanpool runner: {message}\n".encode(errors="replace"))


def _fatal(kind: str, message: str, **details: object) -> None:
    fields: dict[str, object] = {"error": kind, "message": message, **details}
    os.set_blocking(1, True)
    with contextlib.suppress(OSError):
        os.write(1, control_line("fatal", **fields))


def main(argv: list[str]) -> int:
    """Run the tasks the JSON config in argv[0] names; 0 after an end record, 1 after fatal.

    Every error becomes one ``fatal`` record on stdout; the traceback of an unexpected
    one goes to stderr, which the caller keeps for its RunnerCrashed message.
    """
    try:
        config: RunnerConfig = json.loads(argv[0])
        return _Runner(config).run()
    except TaskFileError as exc:
        _fatal("task_file", str(exc), line=exc.line, reason=exc.reason)
    except JournalError as exc:
        _fatal("journal", str(exc))
    except OSError as exc:
        _fatal("runner", f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc))
    except Exception as exc:
        traceback.print_exc()
        _fatal("runner", f"{type(exc).__name__}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

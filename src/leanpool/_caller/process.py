"""Starting one runner, talking to it, and always cleaning up after it (the sync caller).

Shared by ``TaskRunner`` and the CLI.  The caller writes control records on the runner's
stdin (``more``/``end_input``) and reads its records through the one ``RecordReader``.
How no task outlives a run, whatever dies first:

- the caller ends normally or raises (Ctrl-C, an exception in a callback, ``break``):
  ``close()`` closes the runner's stdin, the runner sees EOF, signals every task group
  (SIGTERM, SIGKILL after its grace) and exits; past ``SHUTDOWN_WAIT_S`` the caller
  SIGKILLs it and sweeps (below);
- the caller is killed: its end of the runner's stdin closes, and the runner does the same
  on its own, then removes the run's temporary directory, which the caller cannot;
- the runner is killed or crashes: its stdout ends without an ``end`` record; the caller
  *sweeps* (``sweep_run``: SIGKILL for every process carrying the run's token) and raises
  ``RunnerCrashed``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import weakref
from typing import IO, TYPE_CHECKING, Final

from .._errors import ClusterError, JournalError, LeanpoolError, RunnerError, TaskFileError
from .._protocol.reader import Ended, Fatal, RecordReader
from .._protocol.records import RUN_TOKEN_ENV, encode_line
from .sweep import sweep_run

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._protocol.config import RunnerConfig
    from .._protocol.reader import Event
    from .._protocol.records import (
        CancelRecord,
        EndInputRecord,
        EndRecord,
        FatalRecord,
        HaltRecord,
        MoreRecord,
        StopRecord,
    )

__all__ = [
    "CLUSTER_SHUTDOWN_WAIT_S",
    "SHUTDOWN_WAIT_S",
    "RunnerProcess",
    "fatal_error",
    "runner_command",
]

SHUTDOWN_WAIT_S: Final = 1.5
"""Seconds the caller waits for a runner it asked to stop before it SIGKILLs it: the
runner's own grace for tasks (0.5 s) plus reaping, with room to spare."""

CLUSTER_SHUTDOWN_WAIT_S: Final = 6.0
"""The same for the cluster driver: it stops the batches on the workers (their runners
take ``SHUTDOWN_WAIT_S``), collects what they finished, and may have a LocalCluster of
its own to close."""

_STDERR_TAIL: Final = 4000
"""Bytes of the runner's stderr kept for a RunnerCrashed message."""

_READ_SIZE: Final = 1 << 17
"""Bytes per read of the runner's stdout: hundreds of small results at a time."""

BOOTSTRAP: Final = (
    # Give "leanpool" a bare package object so that leanpool._runner imports without
    # running leanpool/__init__ (which pulls in the caller's API, tqdm, ...).
    "import sys;p=type(sys)('leanpool');p.__path__=[sys.argv[1]];sys.modules['leanpool']=p;"
    "from leanpool._runner.main import main;sys.exit(main(sys.argv[2:]))"
)

_logger = logging.getLogger("leanpool")


DRIVER_BOOTSTRAP: Final = BOOTSTRAP.replace("leanpool._runner.main", "leanpool._cluster.driver")
"""The cluster driver's start: the same empty package, so that the driver does not
import the caller's API either; but with site-packages, where dask lives."""


def runner_command(config: RunnerConfig) -> list[str]:
    """The argv that starts a runner: the caller's own interpreter, isolated (-I) and
    without site-packages (-S), so that it starts fast and imports nothing of the caller.

    A cluster run starts the cluster driver instead, which speaks the same protocol but
    needs site-packages (dask) and the caller's PYTHONPATH to find it."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if config.get("cluster") is not None:
        return [sys.executable, "-c", DRIVER_BOOTSTRAP, package_dir, json.dumps(config)]
    return [sys.executable, "-I", "-S", "-c", BOOTSTRAP, package_dir, json.dumps(config)]


_live_runners: weakref.WeakSet[RunnerProcess] = weakref.WeakSet()


def _forget_runners_in_fork_child() -> None:
    # A process forked from the caller (multiprocessing, os.fork) would inherit the write
    # end of each runner's stdin, and keep it open after the caller died: the runner
    # would never see EOF.  The fork child has no business with our runners.
    for runner in list(_live_runners):
        runner._drop_after_fork()
    _live_runners.clear()


os.register_at_fork(after_in_child=_forget_runners_in_fork_child)


def fatal_error(record: FatalRecord, completed: int) -> LeanpoolError:
    """The exception a ``fatal`` record stands for."""
    message = record.get("message", "unknown error")
    kind = record.get("error")
    if kind == "task_file":
        return TaskFileError(record.get("line", 0), record.get("reason", message))
    if kind == "journal":
        return JournalError(message)
    if kind == "cluster":
        error: RunnerError = ClusterError(
            f"leanpool cluster run failed: {message}", completed=completed
        )
    else:
        error = RunnerError(f"leanpool runner failed: {message}", completed=completed)
    error.fatal_kind = kind
    return error


class RunnerProcess:
    """One running runner: send it control records, iterate its events, always close().

    ``events()`` yields every event but ``Fatal`` (raised as its exception) and returns
    after ``Ended``, whose record is kept as ``end``.
    """

    def __init__(self, config: RunnerConfig, workdir: str, *, share_stderr: bool = False) -> None:
        """Start the runner.

        Args:
            share_stderr: let the runner write to our stderr (the CLI: its warnings reach
                the user as they happen); otherwise it goes to a file, whose lines are
                logged on the "leanpool" logger at the end and quoted if the runner dies.
        """
        self.token = secrets.token_hex(8)
        self.end: EndRecord | None = None
        self.reader = RecordReader()
        env = dict(os.environ)
        env[RUN_TOKEN_ENV] = self.token
        self._stderr_path = None if share_stderr else os.path.join(workdir, "runner.stderr")
        with contextlib.ExitStack() as stack:
            stderr = None
            if self._stderr_path is not None:
                stderr = stack.enter_context(open(self._stderr_path, "wb"))
            # No preexec_fn, no setsid: CPython takes its vfork path, so starting the runner
            # does not copy the page tables of a big caller.
            self._proc = subprocess.Popen(
                runner_command(config),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                close_fds=True,
                bufsize=0,
            )
        self._stdin: IO[bytes] = self._proc.stdin  # type: ignore[assignment]
        self._stdout_fd = self._proc.stdout.fileno()  # type: ignore[union-attr]
        self.pid = self._proc.pid
        self.shutdown_wait = (
            SHUTDOWN_WAIT_S if config.get("cluster") is None else CLUSTER_SHUTDOWN_WAIT_S
        )
        """Seconds to wait for it to exit once it was asked to stop, or has ended."""
        _live_runners.add(self)

    @property
    def completed(self) -> int:
        """Results received so far."""
        return self.reader.completed

    def _drop_after_fork(self) -> None:
        # Close the file objects, not their descriptors under them: a stale object
        # would close its number again later, by then perhaps a file the child opened.
        # Both are unbuffered (bufsize=0): closing writes nothing.
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    # -- control records -------------------------------------------------------------------

    def more(self, offset: int) -> None:
        """Tell the runner the spool holds whole tasks up to offset."""
        record: MoreRecord = {"leanpool": "more", "offset": offset}
        self._send(encode_line(record))

    def end_input(self, offset: int) -> None:
        """Tell the runner no task follows offset."""
        record: EndInputRecord = {"leanpool": "end_input", "offset": offset}
        self._send(encode_line(record))

    def cancel(self, task_id: str | int, before: int | None = None) -> None:
        """Ask the runner to cancel a task: kill it, or never start it; with before, only
        a task whose line ends at that spool offset or before (see ``CancelRecord``)."""
        record: CancelRecord = {"leanpool": "cancel", "id": task_id}
        if before is not None:
            record["before"] = before
        self._send(encode_line(record))

    def halt(self) -> None:
        """Ask the runner to start no more tasks; the running ones finish."""
        record: HaltRecord = {"leanpool": "halt"}
        self._send(encode_line(record))

    def stop(self) -> None:
        """Ask the runner to stop (it kills every task) while we read on: the results
        it sent before, and its ``end`` record, still come."""
        stop: StopRecord = {"leanpool": "stop"}
        self._send(encode_line(stop))
        with contextlib.suppress(OSError):
            self._stdin.close()

    def _send(self, line: bytes) -> None:
        # A runner that died cannot take it; reading its output will say how it died.
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._stdin.write(line)

    # -- reading ---------------------------------------------------------------------------

    def events(self) -> Iterator[Event]:
        """Yield the runner's events as they come; return after ``Ended``.

        Raises:
            TaskFileError, JournalError, RunnerError: the runner's ``fatal`` record.
            RunnerCrashed: the runner's output ended without a last record; every
                process of the run has been killed first.
            ProtocolError: the runner wrote something that is not a record.
        """
        reader = self.reader
        fd = self._stdout_fd
        while True:
            data = os.read(fd, _READ_SIZE)
            if not data:
                break
            events = reader.feed(data)
            if not reader.finished:  # neither an end nor a fatal record among them
                yield from events
                continue
            for event in events:
                if isinstance(event, Ended):
                    self.end = event.record
                    self._wait(self.shutdown_wait)
                    yield event
                    return
                if isinstance(event, Fatal):
                    self._wait(self.shutdown_wait)
                    raise fatal_error(event.record, reader.completed)
                yield event
        returncode = self._wait(self.shutdown_wait)
        sweep_run(self.token)
        reader.close(returncode, self.stderr_tail())

    def stderr_tail(self) -> str:
        """The last part of the runner's stderr, for error messages."""
        if self._stderr_path is None:
            return ""
        try:
            with open(self._stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _STDERR_TAIL))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _wait(self, timeout: float) -> int | None:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop the runner if it still runs, and make sure no task of this run survives."""
        proc = self._proc
        if proc.poll() is None:
            self._ask_to_stop()
            if self._wait(self.shutdown_wait) is None:
                proc.kill()
                proc.wait()
                sweep_run(self.token)
        self._release()

    def _ask_to_stop(self) -> None:
        # "stop" first: we live on, so the runner leaves our directory (and its own
        # stderr file in it) to us.  Then nobody will read the rest: close stdout too,
        # so that a runner blocked on writing to it gets EPIPE at once.
        stop: StopRecord = {"leanpool": "stop"}
        self._send(encode_line(stop))
        for stream in (self._stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()  # stdin's EOF: the runner stops

    def _release(self) -> None:
        """The runner has exited (or been killed): close our ends, reap it, log its
        stderr."""
        proc = self._proc
        _live_runners.discard(self)  # a fork child has nothing of it to close any more
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()
        for line in self.stderr_tail().splitlines():
            _logger.warning("%s", line)

"""Caller side of the protocol: start one runner, read its lines, always clean up after it.

Shared by ``TaskRunner`` and the CLI.  How no task outlives a run, whatever dies first:

- the caller ends normally or raises (Ctrl-C, an exception in a callback, ``break``):
  ``close()`` closes the runner's stdin, the runner sees EOF, signals every task group
  (SIGTERM, SIGKILL after ``INTERRUPT_GRACE_S``) and exits; past ``SHUTDOWN_WAIT_S`` the
  caller SIGKILLs it and sweeps (below);
- the caller is killed: its end of the runner's stdin closes, and the runner does the same
  on its own, then removes the run's temporary directory, which the caller cannot;
- the runner is killed or crashes: its stdout ends without an ``end`` record; the caller
  raises ``RunnerCrashed`` and first *sweeps*: every task carries ``LEANPOOL_RUN=<token>``
  in its environment, and ``sweep_run`` SIGKILLs each process that has it, grandchildren
  included, until a scan of ``/proc`` finds none (within ``sweep_run``'s 2 s deadline).
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
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Final

from ._errors import (
    JournalError,
    LeanpoolError,
    ProtocolError,
    RunnerCrashed,
    RunnerError,
    TaskFileError,
)
from ._supervise import RUN_TOKEN_ENV, sweep_run
from ._wire import PROTOCOL_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._runner import RunnerConfig
    from ._spool import TaskFormat

__all__ = ["SHUTDOWN_WAIT_S", "RunOptions", "RunnerProcess", "default_parallel", "runner_command"]

SHUTDOWN_WAIT_S: Final = 1.5
"""Seconds the caller waits for a runner it asked to stop before it SIGKILLs it: the
runner's own grace for tasks (0.5 s) plus reaping, with room to spare."""

_STDERR_TAIL: Final = 4000
"""Bytes of the runner's stderr kept for a RunnerCrashed message."""

_BOOTSTRAP: Final = (
    # Give "leanpool" a bare package object so that leanpool._runner imports without
    # running leanpool/__init__ (which pulls in the caller's API, tqdm, ...).
    "import sys;p=type(sys)('leanpool');p.__path__=[sys.argv[1]];sys.modules['leanpool']=p;"
    "from leanpool._runner import main;sys.exit(main(sys.argv[2:]))"
)

_logger = logging.getLogger("leanpool")

CONTROL_PREFIX: Final = b'{"leanpool":'


def default_parallel() -> int:
    """Twice the CPUs this process may use, as the original; 8 when that is unknown."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 4
    return 2 * cpus


def _number(name: str, value: object, *, minimum: float, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int if integer else (int, float))):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__}")
    if not value >= minimum or value != value or value == float("inf"):
        raise ValueError(f"{name} must be at least {minimum:g}, not {value!r}")


@dataclass(frozen=True)
class RunOptions:
    """Everything about a run but its tasks; validated when made, naming the argument."""

    parallel: int
    timeout: float | None = None
    kill_grace: float = 2.0
    max_output: int | None = None
    output_dir: str | None = None
    retries: int = 0
    retry_delay: float = 0.0
    halt: int | None = None
    halt_now: bool = False
    journal: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        _number("parallel", self.parallel, minimum=1, integer=True)
        if self.timeout is not None:
            _number("timeout", self.timeout, minimum=0.001)
        _number("kill_grace", self.kill_grace, minimum=0)
        if self.max_output is not None:
            _number("max_output", self.max_output, minimum=0, integer=True)
        _number("retries", self.retries, minimum=0, integer=True)
        _number("retry_delay", self.retry_delay, minimum=0)
        if self.halt is not None:
            _number("halt", self.halt, minimum=1, integer=True)
        if self.resume and self.journal is None:
            raise ValueError("resume needs a journal to resume from")
        if self.output_dir is not None and not os.path.isdir(self.output_dir):
            raise ValueError(f"output_dir {self.output_dir!r} is not a directory")

    def config(
        self,
        tasks: str,
        task_format: TaskFormat,
        *,
        ordered: bool,
        cleanup_dir: str | None,
        spill_dir: str | None = None,
    ) -> RunnerConfig:
        """The runner's config for one run of this task file; paths made absolute, since
        the runner resolves nothing against the caller's later working directory."""
        return {
            "tasks": os.path.abspath(tasks),
            "format": task_format,
            "parallel": self.parallel,
            "timeout": self.timeout,
            "kill_grace": float(self.kill_grace),
            "max_output": self.max_output,
            "output_dir": None if self.output_dir is None else os.path.abspath(self.output_dir),
            "retries": self.retries,
            "retry_delay": float(self.retry_delay),
            "halt": self.halt,
            "halt_now": self.halt_now,
            "journal": None if self.journal is None else os.path.abspath(self.journal),
            "resume": self.resume,
            "ordered": ordered,
            "cleanup_dir": cleanup_dir,
            "spill_dir": spill_dir,
        }


_live_runners: weakref.WeakSet[RunnerProcess] = weakref.WeakSet()


def _forget_runners_in_fork_child() -> None:
    # A process forked from the caller (multiprocessing, os.fork) would inherit the write
    # end of each runner's stdin, and keep it open after the caller died: the runner
    # would never see EOF.  The fork child has no business with our runners.
    for runner in list(_live_runners):
        runner._drop_after_fork()
    _live_runners.clear()


os.register_at_fork(after_in_child=_forget_runners_in_fork_child)


def runner_command(config: RunnerConfig) -> list[str]:
    """The argv that starts a runner: the caller's own interpreter, isolated (-I) and
    without site-packages (-S), so that it starts fast and imports nothing of the caller."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    return [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, package_dir, json.dumps(config)]


class RunnerProcess:
    """One running runner and the lines it writes.

    Iterate ``lines()`` to get each result line as raw bytes; control records are
    consumed here and raise on a refused or broken run.  Always ``close()``.
    """

    def __init__(self, config: RunnerConfig, workdir: str, *, share_stderr: bool = False) -> None:
        """Start the runner.

        Args:
            share_stderr: let the runner write to our stderr (the CLI: its warnings reach
                the user as they happen); otherwise it goes to a file, whose lines are
                logged on the "leanpool" logger at the end and quoted if the runner dies.
        """
        self.token = secrets.token_hex(8)
        self.total: int | None = None
        self.skipped = 0
        self.completed = 0
        self.end: dict[str, object] | None = None
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
                bufsize=1 << 16,
            )
        self._stdout: IO[bytes] = self._proc.stdout  # type: ignore[assignment]
        self.pid = self._proc.pid
        _live_runners.add(self)

    def _drop_after_fork(self) -> None:
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    os.close(stream.fileno())

    def lines(self, on_start: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
        """Yield each result line; return after the end record.

        ``on_start(total, skipped)`` is called once the runner has validated the tasks.

        Raises:
            TaskFileError, JournalError: the runner refused the run.
            RunnerCrashed: the runner's output ended without an end record.
            ProtocolError: the runner wrote something that is not a record.
        """
        for line in self._stdout:
            if not line.startswith(CONTROL_PREFIX):
                if not line.startswith(b'{"id":') or not line.endswith(b"\n"):
                    if not line.endswith(b"\n"):
                        break  # cut mid-line: the runner died while writing
                    raise ProtocolError(line, "not a record", completed=self.completed)
                self.completed += 1
                yield line
                continue
            record = self._control(line)
            kind = record["leanpool"]
            if kind == "start":
                self.total = int(record["total"])  # type: ignore[call-overload]
                self.skipped = int(record["skipped"])  # type: ignore[call-overload]
                if on_start is not None:
                    on_start(self.total, self.skipped)
            elif kind == "end":
                self.end = record
                self._wait(SHUTDOWN_WAIT_S)
                return
            elif kind == "fatal":
                self._wait(SHUTDOWN_WAIT_S)
                raise self._fatal_error(record)
            else:
                raise ProtocolError(line, f"unknown record {kind!r}", completed=self.completed)
        returncode = self._wait(SHUTDOWN_WAIT_S)
        sweep_run(self.token)
        raise RunnerCrashed(returncode, self.stderr_tail(), completed=self.completed)

    def _control(self, line: bytes) -> dict[str, object]:
        try:
            record = json.loads(line)
        except ValueError:
            raise ProtocolError(line, "not JSON", completed=self.completed) from None
        if not isinstance(record, dict):
            raise ProtocolError(line, "not an object", completed=self.completed)
        if record.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(
                line,
                f"protocol {record.get('protocol')!r}, expected {PROTOCOL_VERSION}",
                completed=self.completed,
            )
        return record

    def _fatal_error(self, record: dict[str, object]) -> LeanpoolError:
        message = str(record.get("message", "unknown error"))
        kind = record.get("error")
        if kind == "task_file":
            line = record.get("line")
            return TaskFileError(
                line if isinstance(line, int) else 0, str(record.get("reason", message))
            )
        if kind == "journal":
            return JournalError(message)
        return RunnerError(f"leanpool runner failed: {message}", completed=self.completed)

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
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]  # EOF: the runner stops
            if self._wait(SHUTDOWN_WAIT_S) is None:
                proc.kill()
                proc.wait()
                sweep_run(self.token)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()
        for line in self.stderr_tail().splitlines():
            _logger.warning("%s", line)

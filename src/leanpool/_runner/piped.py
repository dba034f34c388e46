"""The command kind on the C engine: the runner's fast path for the common command.

``_engine`` (``_engine.c``, ``_codec.c`` and ``_module.c``, built by ``pip install``
where a C compiler is present) does
per command what ``shell.ShellChild`` does in Python: two pipes, a start in a new
session, draining, reaping, the leftover probe, and the plain result line.  A command
whose output goes to files (``output_dir``) or that is fed stdin keeps the Python
child; so does every command where the engine was not built, or with
``LEANPOOL_PURE_PYTHON=1`` (our own switch: the test suite runs both ways).

The engine is also the loop's one epoll set, so the loop's own descriptors (stdin,
stdout, the wake pipe, workers, Python children) are registered in it as in a
``select.epoll``; ``poll`` handles the commands' pipes and pidfds in C and returns the
loop's events only.  A ``PipedChild`` is what the loop sees of such a command: no
descriptor of its own, done once the engine hands over its end (``take_finished``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Final, Protocol

from .._protocol.tasks import CommandTask, parse_line
from .children import Child, Outcome
from .spawn import OUT_OF_RESOURCES, SpawnError, status_for
from .timers import When

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .._protocol.config import TaskFormat
    from .._protocol.tasks import Task
    from .children import Host
    from .spawn import Environ

__all__ = [
    "PURE_PYTHON_ENV",
    "Engine",
    "PipedChild",
    "Poller",
    "encode_result",
    "engine_available",
    "file_checker",
    "line_parser",
    "make_engine",
    "start_piped",
]

PURE_PYTHON_ENV: Final = "LEANPOOL_PURE_PYTHON"


class Poller(Protocol):
    """What the loop needs of its epoll set: ``select.epoll`` or the ``Engine``."""

    def register(self, fd: int, eventmask: int = ..., /) -> None: ...

    def modify(self, fd: int, eventmask: int, /) -> None: ...

    def unregister(self, fd: int, /) -> None: ...

    def poll(self, timeout: float = ..., /) -> list[tuple[int, int]]: ...

    def close(self) -> None: ...


class Engine(Poller, Protocol):
    """The C engine (``_engine.Engine``), as the runner uses it."""

    @property
    def finished(self) -> int:
        """Commands that ended and wait for ``take_finished``."""

    @property
    def running(self) -> int: ...

    def spawn(
        self, argv: list[str], env: Mapping[bytes, bytes] | None = None, cwd: str | None = None, /
    ) -> int: ...

    def take_finished(self) -> list[tuple[int, int, bytes, bytes, int]]: ...

    def watch_exit(self, pid: int, /) -> bool: ...

    def abandon(self, pid: int, /) -> bool: ...

    def exited(self, pid: int, status: int, /) -> None: ...

    def note_handlers(self) -> None:
        """Look again at which signals have a handler: a command gets them at SIG_DFL."""


try:
    if os.environ.get(PURE_PYTHON_ENV):
        raise ImportError(f"{PURE_PYTHON_ENV} is set")
    from . import _engine  # type: ignore[attr-defined]
except ImportError:  # not built (no C compiler), or switched off
    _engine = None

encode_result: Callable[[str | int, int, float, bytes, bytes, str | None], bytes | None] | None
"""The plain result line in C (see ``results.result_of``), or None without the engine."""
encode_result = None if _engine is None else _engine.encode_result


def file_checker(task_format: TaskFormat) -> Callable[[int, int], tuple[int, int, int]] | None:
    """The validation pass over a task file's plain lines in C (``check_plain_lines``),
    for a run without a journal; None without the engine."""
    if _engine is None or task_format != "jsonl":
        return None
    checker: Callable[[int, int], tuple[int, int, int]] = _engine.check_plain_lines
    return checker


def line_parser(
    task_format: TaskFormat, *, check_only: bool = False
) -> Callable[[bytes, int], Task | None] | None:
    """The runner's parser of task lines: the common line, ``{"id": ..., "cmd": "..."}``,
    read in C (``_engine.parse_plain``, which leaves every other line to
    ``tasks.parse_line``); None (the standard parser) without the engine.

    ``check_only``: for a validation pass that needs no task (no journal: no id is
    compared), a common line that is valid gives one shared placeholder task, which
    is only counted, never run.
    """
    if _engine is None or task_format != "jsonl":
        return None
    parse_plain = _engine.parse_plain
    valid = CommandTask("", ["true"], shell=False, line=0)

    def parse(raw: bytes, line: int) -> Task | None:
        found = parse_plain(raw)
        if found is not None:
            task_id, cmd = found
            if cmd and not cmd.isspace():  # else parse_line says what is wrong
                if check_only:
                    return valid
                return CommandTask(task_id, ["/bin/sh", "-c", cmd], shell=True, line=line)
        return parse_line(raw, line)

    return parse


_FLAG_OUT_TRUNCATED: Final = 1
_FLAG_ERR_TRUNCATED: Final = 2
_FLAG_LEFTOVERS: Final = 4


def engine_available() -> bool:
    """Whether this runner has the C engine (built, and not switched off)."""
    return _engine is not None


def make_engine(
    devnull: int, base_env: Environ, max_output: int | None, *, pidfds: bool
) -> Engine | None:
    """The runner's engine, or None where it was not built (or is switched off)."""
    if _engine is None:
        return None
    path = base_env.get(b"PATH")
    if path is None:  # posix_spawnp's default search path
        path = (os.confstr("CS_PATH") or "/bin:/usr/bin").encode()
    fs_utf8 = sys.getfilesystemencoding() == "utf-8"  # else argv goes by os.fsencode's way
    engine: Engine = _engine.Engine(devnull, base_env, path, max_output, pidfds, fs_utf8)
    return engine


def start_piped(
    engine: Engine, command: CommandTask, seq: int, attempt: int, host: Host, env: Environ | None
) -> PipedChild:
    """Start one attempt of a command whose output the engine captures.

    Raises:
        SpawnError: it cannot start; OSError: out of descriptors or processes for now.
    """
    argv = command.argv
    try:
        pid = engine.spawn(argv, env, command.cwd)
    except _engine.CwdError as exc:
        raise SpawnError(
            status_for(exc), f"cannot use cwd {command.cwd!r}: {exc.strerror}"
        ) from None
    except _engine.WatchError as exc:
        raise SpawnError(126, f"cannot watch the task: {exc.strerror}") from None
    except _engine.ExecError as exc:
        if exc.errno in OUT_OF_RESOURCES:
            raise OSError(exc.errno, exc.strerror) from None
        raise SpawnError(status_for(exc), f"cannot run {argv[0]!r}: {exc.strerror}") from None
    except ValueError as exc:  # "embedded null byte", mostly
        raise SpawnError(126, f"cannot run {argv[0]!r}: {exc}") from None
    child = PipedChild(command, seq, attempt, pid, host, engine)
    host.watch_exit_later(child)
    return child


class PipedChild(Child):
    """One attempt of a command run by the engine; see the module docstring.

    Invariants: ``exit_asked`` is set once the engine watches the main process's exit;
    ``done`` once the engine handed over its end (``ended``), after which ``status``
    and the output are set and the engine holds nothing of it.
    """

    __slots__ = ("engine", "exit_asked", "flags", "host", "status", "stderr", "stdout")

    def __init__(
        self, task: CommandTask, seq: int, attempt: int, pid: int, host: Host, engine: Engine
    ) -> None:
        super().__init__(task, seq, attempt, pid)
        self.host = host
        self.engine = engine
        self.exit_asked = False
        self.status = 0
        self.stdout = b""
        self.stderr = b""
        self.flags = 0

    def on_event(self, fd: int, events: int) -> None:
        raise AssertionError("the engine watches a piped child's descriptors")

    def on_exit(self, status: int) -> None:
        self.engine.exited(self.pid, status)

    @property
    def exit_watched(self) -> bool:
        return self.exit_asked or self.done or not self.host.pidfds

    def watch_exit(self) -> None:
        if self.exit_watched:
            return
        if self.engine.watch_exit(self.pid):
            self.exit_asked = True
        else:  # out of descriptors: look again shortly
            self.host.after(0.01, When.REAP, self)

    def abandon(self) -> None:
        super().abandon()
        if self.engine.abandon(self.pid):
            self.exit_asked = True
        else:
            self.host.after(0.01, When.REAP, self)

    def ended(self, status: int, stdout: bytes, stderr: bytes, flags: int) -> None:
        """The engine reaped it and closed its pipes: keep how it ended."""
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.flags = flags
        self.done = True
        if flags & _FLAG_LEFTOVERS:
            self.host.leftovers_found(self)

    def outcome(self) -> Outcome:
        outcome = Outcome(self.status, self.stdout, self.stderr)
        self.stdout = self.stderr = b""
        flags = self.flags
        if flags & _FLAG_OUT_TRUNCATED:
            outcome.stdout_truncated = True
        if flags & _FLAG_ERR_TRUNCATED:
            outcome.stderr_truncated = True
        return outcome

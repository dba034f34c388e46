"""The ``leanpool`` command: ``leanpool run FILE|-``, one JSON result line per task.

Exit status: 0 when every task succeeded, 1 when any failed or did not run, 2 for bad
usage or bad input (one line on stderr, never a traceback), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import stat
import sys
import tempfile
from typing import IO, TYPE_CHECKING, NoReturn

from ._errors import JournalError, LeanpoolError, TaskFileError
from ._launch import RunnerProcess, RunOptions, default_parallel
from ._spool import SPOOL_NAME, TaskFormat

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a usable number of seconds: {text!r}")
    return value


def _parser() -> _Parser:
    parser = _Parser(
        prog="leanpool",
        description="Run many shell tasks in parallel from a lean runner process.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser(
        "run",
        help="run the tasks of a file; one JSON result line per task on stdout",
        description=(
            'Run a JSONL task file ({"id": ..., "cmd": ...} per line), or with --lines one '
            "shell command per line. Results go to stdout, one JSON line per task, as tasks "
            "finish; a progress bar goes to stderr when it is a terminal."
        ),
    )
    run.add_argument("file", metavar="FILE", help="task file, or - for stdin")
    run.add_argument(
        "--lines",
        action="store_true",
        help="FILE holds one shell command per line (id: line number)",
    )
    run.add_argument(
        "-j",
        "--parallel",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"tasks at once (default: 2 x usable CPUs = {default_parallel()})",
    )
    run.add_argument("--ordered", action="store_true", help="print results in task order")
    run.add_argument("--timeout", type=_seconds, metavar="S", help="default time limit per task")
    run.add_argument(
        "--kill-grace", type=_seconds, default=2.0, metavar="S", help="SIGTERM to SIGKILL (2)"
    )
    run.add_argument("--max-output", type=_count, metavar="BYTES", help="cap each stream per task")
    run.add_argument("--output-dir", metavar="DIR", help="write task output to files in DIR")
    run.add_argument("--retries", type=_count, default=0, metavar="N", help="retry failed tasks")
    run.add_argument("--retry-delay", type=_seconds, default=0.0, metavar="S")
    run.add_argument("--halt", type=_positive_int, metavar="N", help="stop after N failed tasks")
    run.add_argument("--halt-now", action="store_true", help="with --halt, kill running tasks")
    run.add_argument("--journal", metavar="PATH", help="append each result durably to PATH")
    run.add_argument("--resume", action="store_true", help="skip tasks the journal has")
    progress = run.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def _spool_copy(source: IO[bytes], workdir: str) -> str:
    """Copy a stream into the private spool: the runner reads its task file twice."""
    path = os.path.join(workdir, SPOOL_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as spool:
        shutil.copyfileobj(source, spool, 1 << 20)
    return path


def _open_task_file(name: str) -> IO[bytes]:
    """Open the task file once, or say in one line why it cannot be read."""
    if name == "-":
        return sys.stdin.buffer
    try:
        return open(name, "rb")  # the caller closes it
    except OSError as exc:
        raise _UsageError(f"cannot read {name}: {exc.strerror}") from None


def _task_file(name: str, stream: IO[bytes], workdir: str) -> str:
    """The path the runner should read: the file itself, or a spooled copy of a stream.

    A pipe, <(process substitution), stdin or a device can be read only once, and the
    runner reads its task file twice; it is opened here only once, since even opening a
    FIFO to check it would consume its writer's one chance to be read.
    """
    if name != "-" and stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        return name
    return _spool_copy(stream, workdir)


def _run(args: argparse.Namespace, out: IO[bytes]) -> int:
    if args.resume and args.journal is None:
        raise _UsageError("--resume needs --journal PATH")
    options = RunOptions(
        parallel=args.parallel or default_parallel(),
        timeout=args.timeout,
        kill_grace=args.kill_grace,
        max_output=args.max_output,
        output_dir=args.output_dir,
        retries=args.retries,
        retry_delay=args.retry_delay,
        halt=args.halt,
        halt_now=args.halt_now,
        journal=args.journal,
        resume=args.resume,
    )
    task_format: TaskFormat = "lines" if args.lines else "jsonl"
    source = _open_task_file(args.file)
    if os.path.isdir(args.file):  # Linux opens a directory read-only without complaint
        source.close()
        raise _UsageError(f"cannot read {args.file}: Is a directory")
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    workdir = tempfile.mkdtemp(prefix="leanpool-")
    try:
        with source:
            tasks = _task_file(args.file, source, workdir)
        config = options.config(tasks, task_format, ordered=args.ordered, cleanup_dir=workdir)
        runner = RunnerProcess(config, workdir, share_stderr=True)
        bar = _Progress() if show_progress else None
        try:
            for line in runner.lines(on_start=None if bar is None else bar.start):
                out.write(line)
                out.flush()
                if bar is not None:
                    bar.advance(line)
        finally:
            if bar is not None:
                bar.close()
            runner.close()
        end = runner.end or {}
        if end.get("interrupted") and not end.get("halted"):
            _say(f"stopped by {end.get('stopped_by')}; {end.get('unfinished')} task(s) unfinished")
            return EXIT_INTERRUPTED if end.get("stopped_by") == "SIGINT" else EXIT_FAILED
        if end.get("halted"):
            _say(f"halted after {end.get('failed')} failed task(s)")
        return EXIT_OK if not end.get("failed") and not end.get("unfinished") else EXIT_FAILED
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Progress:
    """A tqdm bar on stderr: tasks done, rate and ETA, and the failures so far."""

    def __init__(self) -> None:
        from tqdm import tqdm  # only when a bar is shown: keeps plain runs quick to start

        self._bar = tqdm(total=None, unit="task", file=sys.stderr, dynamic_ncols=True)
        self._failed = 0

    def start(self, total: int, skipped: int) -> None:
        self._bar.reset(total=total - skipped)
        if skipped:
            self._bar.set_description(f"resumed, {skipped} done before")

    def advance(self, line: bytes) -> None:
        if b'"ok":false' in line:
            self._failed += 1
            self._bar.set_postfix(failed=self._failed, refresh=False)
        self._bar.update()

    def close(self) -> None:
        self._bar.close()


def _say(message: str) -> None:
    print(f"leanpool: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``leanpool`` command; returns the exit status."""
    out = sys.stdout.buffer
    try:
        args = _parser().parse_args(argv)
        return _run(args, out)
    except _UsageError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except (TaskFileError, JournalError, ValueError, TypeError) as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except LeanpoolError as exc:
        _say(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away (``| head``): stop quietly, as cat does.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return EXIT_FAILED
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK

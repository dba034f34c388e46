"""The ``leanpool`` command: ``leanpool run FILE|-``, one JSON result line per task.

A regular task file is validated whole before any task starts (a bad line: one error
naming it, nothing run).  A pipe, stdin or a FIFO is streamed: tasks start as their lines
arrive, and a bad line stops new starts, lets the running tasks finish and report, then
ends with the same one-line error.

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
import threading
from typing import IO, TYPE_CHECKING, Final, NoReturn

from ._caller.calls import worker_config
from ._caller.options import add_cli_options, cli_options
from ._caller.output import silence_stdout, write_record
from ._caller.process import RunnerProcess
from ._caller.progress import Progress
from ._cluster.connect import cluster_config
from ._errors import JournalError, LeanpoolError, TaskFileError
from ._protocol.config import runner_config
from ._protocol.reader import Ended, ResultEvent, Skipped, Started
from ._protocol.spool import SPOOL_NAME

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._protocol.calls import WorkerConfig
    from ._protocol.config import TaskFormat
    from ._protocol.records import EndRecord

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_FEED_CHUNK: Final = 1 << 20
"""Bytes the CLI reads from a streamed task source at a time: a read returns what has
arrived, so a slow source is passed on line by line and a fast one in big batches."""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> _Parser:
    parser = _Parser(
        prog="leanpool",
        description="Run many shell tasks in parallel from a lean runner process.",
    )
    parser.add_argument("--version", action="version", version=f"leanpool {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser(
        "run",
        help="run the tasks of a file; one JSON result line per task on stdout",
        description=(
            'Run a JSONL task file ({"id": ..., "cmd": ...} per line), or with --lines one '
            "shell command per line. Results go to stdout, one JSON line per task, as tasks "
            "finish; a progress bar goes to stderr when it is a terminal. A regular file is "
            "validated whole before any task starts; a pipe or stdin is run as it arrives."
        ),
    )
    run.add_argument("file", metavar="FILE", help="task file, or - for stdin")
    commands.add_parser(
        "parallel",
        help="GNU parallel's syntax: leanpool parallel gzip {} ::: *.log",
        add_help=False,
    )
    run.add_argument(
        "--lines",
        action="store_true",
        help="FILE holds one shell command per line (id: line number)",
    )
    run.add_argument("--ordered", action="store_true", help="print results in task order")
    run.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run on a Dask cluster: a scheduler address (tcp://host:8786), or local:N "
        "for a LocalCluster of N workers on this machine (pip install 'leanpool[dask]')",
    )
    add_cli_options(run)
    progress = run.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def _version() -> str:
    from . import __version__  # the package, once its CLI runs

    return __version__


def _open_task_file(name: str) -> IO[bytes]:
    """Open the task file once, or say in one line why it cannot be read.

    Opened only once: even opening a FIFO to check it would consume its writer's one
    chance to be read.
    """
    if name == "-":
        return sys.stdin.buffer
    try:
        source = open(name, "rb")  # noqa: SIM115  # the caller closes it
    except OSError as exc:
        raise _UsageError(f"cannot read {name}: {exc.strerror}") from None
    if stat.S_ISDIR(os.fstat(source.fileno()).st_mode):  # Linux opens one without complaint
        source.close()
        raise _UsageError(f"cannot read {name}: Is a directory")
    return source


class _Feeder(threading.Thread):
    """Copies a streamed task source into the spool as it arrives, announcing whole lines.

    A thread of its own, so that reading results never waits on the source.  A last line
    without a newline is completed, as a file's would be read.  If the source fails
    (EIO, a full disk for the spool), what arrived runs and ``error`` says why the rest
    did not; the CLI then exits non-zero.
    """

    def __init__(self, source: IO[bytes], spool_path: str, runner: RunnerProcess) -> None:
        super().__init__(name="leanpool-feed", daemon=True)
        self._source = source
        self._spool_path = spool_path
        self._runner = runner
        self.error: str | None = None

    def run(self) -> None:
        fd = self._source.fileno()
        offset = 0
        with open(self._spool_path, "ab") as spool:
            try:
                os.set_blocking(fd, True)  # a parent may have left it non-blocking
                last = b"\n"
                while data := os.read(fd, _FEED_CHUNK):
                    spool.write(data)  # whole lines or not: only whole ones are announced
                    cut = data.rfind(b"\n")
                    if cut >= 0:
                        spool.flush()
                        self._runner.more(offset + cut + 1)
                    offset += len(data)
                    last = data[-1:]
                if last != b"\n":
                    spool.write(b"\n")
                    offset += 1
                spool.flush()
            except OSError as exc:
                self.error = f"cannot read the task stream: {exc.strerror or exc}"
                offset = self._whole_lines(spool)
        self._runner.end_input(offset)

    def _whole_lines(self, spool: IO[bytes]) -> int:
        """After a failure: the offset of the last whole line written."""
        with contextlib.suppress(OSError):
            spool.flush()
        data = b""
        with contextlib.suppress(OSError), open(self._spool_path, "rb") as f:
            data = f.read()
        return data.rfind(b"\n") + 1


def _run(args: argparse.Namespace, out: IO[bytes]) -> int:
    try:
        options = cli_options(args)
        cluster = cluster_config(args.cluster, args.parallel)
    except (ValueError, TypeError) as exc:  # what the user wrote: a usage error
        raise _UsageError(str(exc)) from None
    task_format: TaskFormat = "lines" if args.lines else "jsonl"
    source = _open_task_file(args.file)
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    stream = args.file == "-" or not stat.S_ISREG(os.fstat(source.fileno()).st_mode)
    workdir = tempfile.mkdtemp(prefix="leanpool-")
    try:
        path = os.path.abspath(args.file)
        if stream:
            path = os.path.join(workdir, SPOOL_NAME)
            with open(path, "xb"):
                pass
        try:
            # Big outputs come as files (spill) and are streamed into the printed line.
            config = runner_config(
                options,
                spool_path=path,
                workdir=workdir,
                workers=_worker_config(),
                task_format=task_format,
                stream=stream,
                ordered=args.ordered,
                cluster=cluster,
            )
            runner = RunnerProcess(config, workdir, share_stderr=True)
        except BaseException:
            source.close()  # no feeder took it
            raise
        feeder = None
        if stream:
            feeder = _Feeder(source, path, runner)
            feeder.start()
        else:
            source.close()
        bar = Progress(terminal=True) if show_progress else None
        try:
            for event in runner.events():
                if isinstance(event, ResultEvent):
                    write_record(out, event.record, event.line)
                    out.flush()
                    if bar is not None:
                        bar.advance(ok=event.record["ok"])
                elif bar is not None and isinstance(event, (Started, Skipped)):
                    bar.started(event)
                elif isinstance(event, Ended):
                    status = _exit_status(event.record)
                    if feeder is not None and feeder.error is not None:
                        _say(f"error: {feeder.error}; the tasks that arrived before it ran")
                        return max(status, EXIT_FAILED)
                    return status
        finally:
            if bar is not None:
                bar.close()
            runner.close()
        raise AssertionError("the runner's events end with Ended or raise")  # pragma: no cover
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _worker_config() -> WorkerConfig:
    """The workers of calls import from the working directory first, as ``python -m``
    does: ``{"call": "mymodule:f"}`` finds ./mymodule.py."""
    config = worker_config()
    config["path"].insert(0, os.getcwd())
    config["main_path"] = config["main_module"] = None  # the CLI's own main is no caller's
    return config


def _exit_status(end: EndRecord) -> int:
    if end["interrupted"] and not end["halted"]:
        _say(f"stopped by {end['stopped_by']}; {end['unfinished']} task(s) unfinished")
        return EXIT_INTERRUPTED if end["stopped_by"] == "SIGINT" else EXIT_FAILED
    if end["halted"]:
        _say(f"halted after {end['failed']} failed task(s)")
    if end.get("skipped_failed"):
        count = end["skipped_failed"]
        _say(f"{count} task(s) failed in an earlier run (--resume-failed runs them again)")
    failed = end["failed"] or end["unfinished"] or end.get("skipped_failed")
    return EXIT_FAILED if failed else EXIT_OK


def _say(message: str) -> None:
    print(f"leanpool: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``leanpool`` command; returns the exit status."""
    out = sys.stdout.buffer
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["parallel"]:  # GNU parallel's syntax, which argparse cannot take
        from ._parallel import main as parallel_main  # only when asked

        return parallel_main(argv[1:])
    try:
        args = _parser().parse_args(argv)
        return _run(args, out)
    except _UsageError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except (TaskFileError, JournalError) as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except LeanpoolError as exc:
        _say(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout(out)
        return EXIT_FAILED
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK

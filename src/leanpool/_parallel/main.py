"""Running a ``leanpool parallel`` command line: input to jobs, jobs to the runner,
results to the terminal.

A feeder thread turns input items into task lines in the spool as they arrive and
announces them (``more``), so the first job starts before stdin ends; the main thread
reads the runner's records and prints each job's stdout and stderr whole as the job ends
(in input order with ``-k``).  Outputs of 64 KiB and more come as spill files, so a big
output is never one giant JSON line in this process.

Exit status, as GNU parallel's: 0 when every job succeeded; else the number of failed
jobs (those of a resumed journal included), 101 for more than 100; with a halt on the
first failure, the failing job's own status; 130 after Ctrl-C; 255 for a command line
or input that cannot be run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from typing import IO, TYPE_CHECKING, Final

from .._caller.options import make_options
from .._caller.output import silence_stdout, write_record
from .._caller.process import RunnerProcess
from .._caller.progress import Progress
from .._caller.result import result_from_record
from .._errors import LeanpoolError, TaskFileError
from .._protocol.config import runner_config
from .._protocol.reader import Ended, ResultEvent, Skipped
from .._protocol.records import encode_line
from .._protocol.spool import SPOOL_NAME
from .inputs import PAUSE, jobs
from .syntax import UsageError, parse
from .template import SLOT_VARIABLE, Template

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from .._caller.result import Result
    from .._protocol.records import EndRecord, ResultRecord
    from .syntax import Job

__all__ = ["main"]

EXIT_ERROR: Final = 255
EXIT_INTERRUPTED: Final = 130
_MOST_FAILURES: Final = 101
"""GNU parallel's exit status for more than 100 failed jobs."""

_LEAD: Final = 100_000
"""Jobs the feeder may write ahead of the results printed: a bound on the tags kept
and on how far a huge input runs ahead into the spool."""

_FLUSH_EVERY: Final = 256
"""Jobs written between announcements when the input never pauses (``:::`` values)."""


def main(argv: Sequence[str]) -> int:
    """``leanpool parallel ARGV``; returns the exit status."""
    try:
        job = parse(argv)
        template = Template(job.command, sources=len(job.sources) or 1, quote_words=job.quote)
    except (UsageError, ValueError) as exc:
        _say(f"error: {exc}")
        return EXIT_ERROR
    items = jobs(
        job.sources, separator=b"\0" if job.null else b"\n", link=job.link, stdin=sys.stdin.buffer
    )
    out = sys.stdout.buffer
    try:
        if job.dry_run:
            return _dry_run(template, items, out)
        return _run(job, template, items, out)
    except BrokenPipeError:  # before OSError, of which it is one
        silence_stdout(out)
        return EXIT_ERROR
    except OSError as exc:
        _say(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_ERROR
    except (TaskFileError, LeanpoolError, ValueError) as exc:
        _say(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED


def _dry_run(template: Template, items: Iterator[tuple[str, ...] | None], out: IO[bytes]) -> int:
    seq = 0
    for args in items:
        if args is not None:
            seq += 1
            out.write(os.fsencode(template.command(args, seq)) + b"\n")
    out.flush()
    return 0


def _run(
    job: Job, template: Template, items: Iterator[tuple[str, ...] | None], out: IO[bytes]
) -> int:
    halt = job.halt
    options = make_options(
        parallel=job.parallel,
        timeout=job.timeout,
        retries=job.tries - 1,
        journal=job.joblog,
        resume=job.resume,
        resume_failed=job.resume_failed,
    )
    workdir = tempfile.mkdtemp(prefix="leanpool-")
    try:
        spool_path = os.path.join(workdir, SPOOL_NAME)
        with open(spool_path, "xb"):
            pass
        config = runner_config(
            options,
            spool_path=spool_path,
            workdir=workdir,
            ordered=job.keep_order,
            halt_rule=None
            if halt is None
            else {
                "on": "fail" if halt.on_failure else "success",
                "count": halt.count,
                "percent": halt.percent,
                "now": halt.now,
            },
            slot_env=SLOT_VARIABLE if template.uses_slot else None,
        )
        runner = RunnerProcess(config, workdir, share_stderr=True)
        feeder = _Feeder(template, items, spool_path, runner, keep_tags=job.tag)
        feeder.start()
        bar = Progress(terminal=True) if job.bar else None
        try:
            printer = _Printer(job, out, feeder, bar)
            for event in runner.events():
                if isinstance(event, ResultEvent):
                    printer.result(event)
                elif isinstance(event, Skipped):
                    feeder.release(event.count - printer.skipped)
                    printer.skipped = event.count
                elif isinstance(event, Ended):
                    if feeder.error is not None:
                        _say(f"error: {feeder.error}; the jobs read before it ran")
                        return EXIT_ERROR
                    return printer.exit_status(event.record)
        finally:
            feeder.stop()
            if bar is not None:
                bar.close()
            runner.close()
        raise AssertionError("the runner's events end with Ended or raise")  # pragma: no cover
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Feeder(threading.Thread):
    """Writes one task line per job to the spool as its input arrives, and announces
    them; ends the input when the sources are exhausted.  At most ``_LEAD`` jobs ahead
    of the results printed.

    Invariant: fewer than ``_FLUSH_EVERY`` of the jobs written are not yet announced
    whenever the feeder may wait (for room, or for input at a ``PAUSE``, where it
    announces them all).  Since ``_FLUSH_EVERY < _LEAD``, a feeder waiting for room
    always has announced jobs still to end, whose results give it room: it never
    waits on jobs the runner has not been told of.  The counts compared are jobs;
    the spool's byte offset is only what ``more`` says.
    """

    def __init__(
        self,
        template: Template,
        items: Iterator[tuple[str, ...] | None],
        spool_path: str,
        runner: RunnerProcess,
        *,
        keep_tags: bool,
    ) -> None:
        super().__init__(name="leanpool-parallel-feed", daemon=True)
        self._template = template
        self._items = items
        self._spool_path = spool_path
        self._runner = runner
        self._room = threading.Semaphore(_LEAD)
        self._stopping = False
        self.tags: dict[int, bytes] | None = {} if keep_tags else None
        self.error: str | None = None
        self.total: int | None = None

    def run(self) -> None:
        seq = 0  # jobs written to the spool
        announced = 0  # jobs the runner has been told of (``more``)
        offset = 0  # bytes written to the spool: where the jobs written end
        with open(self._spool_path, "ab") as spool:
            try:
                for args in self._items:
                    if self._stopping:
                        break
                    if args is PAUSE or seq - announced >= _FLUSH_EVERY:
                        if seq != announced:
                            spool.flush()
                            self._runner.more(offset)
                            announced = seq
                        if args is PAUSE:
                            continue
                    assert args is not None
                    self._room.acquire()
                    seq += 1
                    if self.tags is not None:
                        self.tags[seq] = os.fsencode(" ".join(args))
                    template = self._template
                    cmd = (
                        template.argv(args, seq) if template.simple else template.command(args, seq)
                    )
                    line = encode_line({"id": seq, "cmd": cmd})
                    spool.write(line)
                    offset += len(line)
                spool.flush()
            except OSError as exc:
                self.error = f"cannot read the input: {exc.strerror or exc}"
        self.total = seq
        self._runner.end_input(offset)

    def release(self, count: int = 1) -> None:
        """Results (or journal skips) came for count jobs: the feeder may go on."""
        for _ in range(count):
            self._room.release()

    def stop(self) -> None:
        self._stopping = True
        self._room.release()


class _Printer:
    """Prints each job's output whole as its result comes, and keeps the counts that
    make the exit status."""

    def __init__(self, job: Job, out: IO[bytes], feeder: _Feeder, bar: Progress | None) -> None:
        self.job = job
        self.out = out
        self.err = sys.stderr.buffer
        self.feeder = feeder
        self.bar = bar
        self.failed = 0
        self.succeeded = 0
        self.skipped = 0
        self.last_failure = 0

    def result(self, event: ResultEvent) -> None:
        self.feeder.release()
        if self.job.json:
            write_record(self.out, event.record, event.line)
            result = result_from_record(_without_spills(event.record))
        else:
            result = result_from_record(event.record)
        tags = self.feeder.tags
        tag = tags.pop(result.id, b"") if tags is not None and isinstance(result.id, int) else b""
        if not self.job.json:
            self._print(result, tag)
        if result.ok:
            self.succeeded += 1
        else:
            self.failed += 1
            self.last_failure = _exit_code(result)
        if self.bar is not None:
            if self.feeder.total is not None:
                self.bar.set_total(self.feeder.total - self.skipped)
            self.bar.advance(ok=result.ok)

    def _print(self, result: Result, tag: bytes) -> None:
        if isinstance(result.error, str):  # it could not start: say why, as a shell would
            _say(f"job {result.id}: {result.error}")
        for data, stream in ((result.stdout_bytes, self.out), (result.stderr_bytes, self.err)):
            if not data:
                continue
            if tag:
                lines = data.splitlines(keepends=True)
                data = b"".join(tag + b"\t" + line for line in lines)
            stream.write(data)
            stream.flush()

    def exit_status(self, end: EndRecord) -> int:
        halt = self.job.halt
        if end["interrupted"] and not end["halted"]:
            stopped_by = end["stopped_by"]
            _say(f"stopped by {stopped_by}; {end['unfinished']} job(s) unfinished")
            return EXIT_INTERRUPTED if stopped_by in ("SIGINT", "caller") else EXIT_ERROR
        halted = end["halted"]
        if halted and halt is not None and halt.on_failure and halt.count == 1:
            return self.last_failure
        failures = self.failed + end.get("skipped_failed", 0)
        if halted and halt is not None and not halt.on_failure:
            return 0  # it stopped because enough jobs succeeded
        return min(failures, _MOST_FAILURES)


def _without_spills(record: ResultRecord) -> ResultRecord:
    """The record with its spilled outputs left out (printed, and removed, already)."""
    kept = record.copy()
    if kept.pop("stdout_spill", None) is not None:
        kept["stdout"] = ""
    if kept.pop("stderr_spill", None) is not None:
        kept["stderr"] = ""
    return kept


def _exit_code(result: Result) -> int:
    """A failed job's status as a shell's ``$?``: 128 + N for signal N, 1 for a timeout
    that ended it cleanly."""
    if result.status < 0:
        return 128 - result.status
    return result.status or 1


def _say(message: str) -> None:
    print(f"leanpool parallel: {message}", file=sys.stderr)

#!/usr/bin/env python3
"""How fast can a big Python program run many small shell tasks, method by method?

Run from a checkout: ``python benchmarks/bench.py`` (``benchmarks/setup.sh`` first
installs GNU parallel, a C compiler and matplotlib when they are missing).

The question leanpool answers is what a *big* caller pays to start a task.  So the
caller first grows a realistic heap (many small, touched Python objects, the kind whose
page tables a fork must copy), then runs the same tasks with each method, side by side
in the same process, round-robin over the repeats so that the machine's drift hits all
methods alike.

Every result is checked against its own task, as results stream in (see ``Checker``):
each task's output starts with its index, and a result must name a task of the run that
gave no result before (by its id for leanpool, by the command it ran for the pools in
the caller, by that index for the external tools and the C ceiling), have exited 0, and
carry its task's exact stdout and an empty stderr; every task must give exactly one
result.  A method that fails this is not reported: the harness stops with
``VERIFICATION FAILED`` and the first bad results.  ``--selfcheck`` proves in a few
seconds that wrong result sets (all labelled id 0, swapped, missing, duplicated, ...)
are refused.

The header and ``--json`` record what was measured: the SHA-256 of the leanpool source
tree that was imported (see ``source_hash``; the runner is started from the same
directory), next to the git HEAD of the checkout holding this script, which is not
necessarily the code measured (``--src``, uncommitted changes).

Per method and caller size it prints tasks per second, the ratio to the best method,
the caller's own CPU time per task (what the program doing the work cannot use), the
caller's peak RSS and, for leanpool, the runner's peak RSS.  ``--gil-probe`` also runs a
pure-Python loop in a caller thread and reports how much each method slows it.  At the
end it prints the project's performance targets as MET / NOT MET where it has the data.

This file holds the workloads, methods, checks and targets; the measuring kit (/proc
probes, the caller's heap, paired statistics, the record, tables) is ``harness.py``'s,
shared with the other benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from harness import (  # benchmarks/harness.py, beside this file
    MIB,
    Column,
    Heap,
    Poller,
    VerificationError,
    at_least,
    build_ceiling,
    cpu_times,
    find_runner,
    fmt,
    git,
    machine_basics,
    measured_leanpool,
    note_source_at_end,
    paired,
    ratios,
    reset_peak,
    rotated,
    rss_bytes,
    save_json,
    src_dirty,
    status_kb,
    table,
)
from srcpath import source_hash, use_source_dir  # benchmarks/srcpath.py, beside this file

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence


SOURCE_DIR: Final = use_source_dir(sys.argv)
# leanpool itself is imported by main() (machine_info), before anything is timed, and not
# here: --selfcheck and --report work whatever state the package is in.

ALL_METHODS: Final = (
    "forloop",
    "threads",
    "threads-fork",
    "mp-fork",
    "mp-fork-mtpc1",
    "leanpool",
    "leanpool-py",
    "xargs",
    "parallel",
    "ceiling",
)
SLOW_METHODS: Final = frozenset({"forloop", "threads-fork", "mp-fork-mtpc1"})
"""Methods that run one task at a time (forloop) or fork the whole caller per task: at a
few GB they do ~10-40 tasks/s, so ``--slow-cap`` limits their task count."""

WORKLOADS: Final = ("echo", "sleep", "bigout", "memory")
DEFAULT_PARALLEL: Final = {"echo": 8, "sleep": 16, "bigout": 8, "memory": 8}
DEFAULT_TASKS: Final = {"echo": 2000, "sleep": 2000, "bigout": 200, "memory": 1_000_000}
PROBE_ALONE_S: Final = 0.5
"""Seconds the GIL probe runs alone before each measured run, for its baseline rate."""


# -- watching the runner -----------------------------------------------------------------


class RunnerWatch(Poller):
    """Polls the runner's VmHWM from a caller thread while a leanpool run goes on.

    VmHWM is the kernel's own peak, so a 10 ms poll only misses what the runner adds in
    its last moments (its end record), not short spikes in between.  Its ``cpu_s`` is
    measurement, not the method's cost.
    """

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(interval, "runner-watch")
        self.pid: int | None = None
        self.peak_kb = 0

    def current_kb(self) -> int | None:
        """The runner's current RSS (VmRSS), for progress lines."""
        return None if self.pid is None else status_kb("VmRSS", self.pid)

    def sample(self) -> None:
        if self.pid is None:
            self.pid = find_runner()
        if self.pid is not None:
            kb = status_kb("VmHWM", self.pid)
            if kb is not None:
                self.peak_kb = max(self.peak_kb, kb)


# -- workloads and the checks of their results ----------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The tasks of one workload, and what each task must print.

    Task i prints exactly ``head(i)`` and then ``body``: ``"i\\n"`` for echo and sleep,
    ``"@task i\\n"`` and then the same bytes for every task for bigout.  So every
    output names its task, and each method's results can be checked one by one
    against the task they claim to come from, even from a stream that merges them
    (for that, the prefix's first byte must not occur in the body: "@" is in neither
    bigout body, so a memchr finds every head).
    """

    name: str
    commands: list[str]
    prefix: str = ""
    body: bytes = b""

    def head(self, index: int) -> bytes:
        """The first line task ``index`` prints: the name of its task."""
        return f"{self.prefix}{index}\n".encode()

    def output_ok(
        self, index: int, output: bytes | bytearray, start: int = 0, end: int | None = None
    ) -> bool:
        """Whether ``output[start:end]`` is exactly what task ``index`` prints, compared
        in place (a stream's buffer is not copied)."""
        end = len(output) if end is None else end
        head = self.head(index)
        return (
            end - start == len(head) + len(self.body)
            and output.startswith(head, start, end)
            and output.endswith(self.body, start, end)
        )

    def parse_head(self, line: bytes) -> int | None:
        """The index a head line (newline included) names; None if it is no head."""
        prefix = self.prefix.encode()
        if not line.startswith(prefix) or not line.endswith(b"\n"):
            return None
        digits = line[len(prefix) : -1]
        if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
            return None
        return int(digits)

    def output_bytes(self, n: int) -> int:
        """Bytes the first n tasks print together."""
        return sum(len(self.head(i)) for i in range(n)) + n * len(self.body)


MAX_HEAD: Final = 48
"""Bytes a head line takes at most (a prefix of a few bytes, 20 digits, a newline)."""


class Checker:
    """Checks every result of one run against its own task, as the results stream in.

    A result names its task (its id, or the index its output starts with) and must come
    from a task of this run that gave no result before, exit 0, and carry its task's
    exact stdout and an empty stderr; in the end every task must have given exactly one
    result.  Only counts and the first few bad results are kept: a run of a million
    tasks costs a million bytes.
    """

    EXAMPLES: Final = 5

    def __init__(self, workload: Workload, n: int) -> None:
        self.workload = workload
        self.n = n
        self.count = 0
        self.seen = bytearray(n)
        self.problems: dict[str, int] = {}
        self.examples: list[str] = []
        self.merged_bytes: int | None = None
        """For a merged stream: the bytes it carried, checked against all outputs' sum."""
        self.runner_peak_kb: int | None = None
        self.watch_cpu_s = 0.0

    def _bad(self, problem: str, describe: Callable[[], str]) -> None:
        self.problems[problem] = self.problems.get(problem, 0) + 1
        if len(self.examples) < self.EXAMPLES:
            self.examples.append(f"{problem}: {describe()}")

    def claim(self, task_id: object, describe: Callable[[], str]) -> int | None:
        """Count one result for the task its id names; return the task's index when
        that is a task of this run with no result yet."""
        self.count += 1
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < self.n:
            self._bad("whose id names no task of this run", describe)
            return None
        if self.seen[task_id]:
            self._bad("whose id already had a result", describe)
            return None
        self.seen[task_id] = 1
        return task_id

    def add(
        self,
        task_id: object,
        status: int,
        stdout: bytes | bytearray,
        stderr: bytes,
        describe: Callable[[], str],
        ok: bool = True,
        span: tuple[int, int] | None = None,
    ) -> None:
        """Check one result against the task its id names; its stdout is
        ``stdout[span[0]:span[1]]`` when a span is given."""
        index = self.claim(task_id, describe)
        if index is None:
            return
        if status != 0 or not ok:
            self._bad("whose task failed (status not 0, or not ok)", describe)
        elif not self.workload.output_ok(index, stdout, *(span or (0, None))):
            self._bad("whose stdout is not their task's", describe)
        elif stderr:
            self._bad("with output on stderr", describe)

    def verify(self, method: str) -> None:
        """Raise VerificationError unless every task gave exactly one right result."""
        problems = []
        if self.count != self.n:
            problems.append(f"{self.count} results for {self.n} tasks")
        missing = self.seen.count(0)
        if missing:
            first: list[str] = []
            at = self.seen.find(0)
            while at >= 0 and len(first) < 10:
                first.append(str(at))
                at = self.seen.find(0, at + 1)
            more = ", ..." if missing > len(first) else ""
            problems.append(f"{missing} tasks gave no result (ids {', '.join(first)}{more})")
        problems.extend(
            f"{k} result{'s' * (k != 1)} {problem}" for problem, k in self.problems.items()
        )
        if self.merged_bytes is not None:
            expected = self.workload.output_bytes(self.n)
            if self.merged_bytes != expected:
                problems.append(f"the merged output has {self.merged_bytes} bytes, not {expected}")
        if problems:
            examples = "".join(f"\n  bad result: {e}" for e in self.examples)
            raise VerificationError(
                f"{method} on {self.workload.name}: " + "; ".join(problems) + examples
            )


def _describe_output(
    what: str, status: int | None, stdout: bytes | bytearray, stderr: bytes, start: int = 0
) -> str:
    status_text = "" if status is None else f"status {status}, "
    head = bytes(stdout[start : start + 80])
    return f"{what}: {status_text}stdout {head!r}, stderr {stderr[:300]!r}"


def check_records(checker: Checker, chunks: Iterable[bytes], source: str) -> None:
    """Check a stream of records ``"INDEX STATUS OUTBYTES ERRBYTES\\n"`` + stdout + stderr
    (the ceiling's), one per task, each against the task its INDEX names."""
    buf, pos, offset = bytearray(), 0, 0
    for chunk in chunks:
        buf += chunk
        while (nl := buf.find(b"\n", pos)) >= 0:
            header = bytes(buf[pos:nl])
            try:
                index, status, n_out, n_err = (int(x) for x in header.split())
                if n_out < 0 or n_err < 0:
                    raise ValueError
            except ValueError:
                raise VerificationError(
                    f"{source}: no record header at byte {offset + pos}: {header[:80]!r}"
                ) from None
            start = nl + 1
            split = start + n_out
            end = split + n_err
            if len(buf) < end:
                break
            err = bytes(buf[split:end])
            what = f"record {index}"
            describe = functools.partial(_describe_output, what, status, buf, err, start)
            checker.add(index, status, buf, err, describe, span=(start, split))
            pos = end
        del buf[:pos]
        offset += pos
        pos = 0
    if buf:
        raise VerificationError(f"{source}: the stream ends inside a record: {bytes(buf[:80])!r}")


def check_grouped(checker: Checker, chunks: Iterable[bytes], source: str) -> None:
    """Check a stream of whole task outputs, one after another, each against the task
    its head names.

    GNU parallel groups each task's output; xargs's tasks of echo and sleep each print
    one line of a few bytes, one write that a pipe keeps whole.  Neither reports a
    task's exit status: the tool's own exit status, checked by ``_external``, says
    whether any task failed.
    """
    wl = checker.workload
    buf, pos, offset = bytearray(), 0, 0
    for chunk in chunks:
        buf += chunk
        while (nl := buf.find(b"\n", pos)) >= 0:
            end = nl + 1 + len(wl.body)
            if len(buf) < end:
                break
            head = bytes(buf[pos : nl + 1])
            index = wl.parse_head(head)
            if index is None:
                raise VerificationError(
                    f"{source}: no task's output starts at byte {offset + pos}: {head[:80]!r}"
                )
            what = f"output of {index}"
            describe = functools.partial(_describe_output, what, None, buf, b"", pos)
            checker.add(index, 0, buf, b"", describe, span=(pos, end))
            pos = end
        del buf[:pos]
        offset += pos
        pos = 0
    if buf:
        raise VerificationError(f"{source}: the stream ends inside an output: {bytes(buf[:80])!r}")


def check_merged(checker: Checker, chunks: Iterable[bytes], source: str) -> None:
    """Check one pipe that all tasks wrote into at once (xargs on bigout).

    Outputs bigger than a pipe's atomic write interleave there, so they cannot be told
    apart.  But each head is one short write, which the pipe keeps whole: every task's
    head must be there exactly once, every byte that starts a head must start a whole
    one, and the stream must carry exactly the bytes of all outputs together.  The
    bodies themselves cannot be checked one by one.
    """
    wl = checker.workload
    first = wl.prefix.encode()[:1]
    if not first or first in wl.body:
        raise ValueError("a merged stream needs heads that start with a byte no body has")
    total, carry = 0, b""
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        base = total - len(carry)
        total += len(chunk)
        carry = b""
        at = data.find(first)
        while at >= 0:
            nl = data.find(b"\n", at, at + MAX_HEAD)
            if nl < 0 and len(data) - at < MAX_HEAD:
                carry = data[at:]  # a head cut by the end of this read: the next one ends it
                break
            index = None if nl < 0 else wl.parse_head(data[at : nl + 1])
            if index is None:
                raise VerificationError(
                    f"{source}: no head at byte {base + at}: {data[at : at + MAX_HEAD]!r}"
                )
            checker.claim(index, functools.partial(str, f"head of {index} at byte {base + at}"))
            at = data.find(first, nl + 1)
    if carry:
        raise VerificationError(f"{source}: the stream ends inside a head: {carry!r}")
    checker.merged_bytes = total


def bigout_text(size: int) -> bytes:
    """What a bigout task prints after its head by default: text lines, as real tools."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-leanpool-benchmark\n"
    return (line * (size // len(line) + 1))[:size]


def make_workload(
    name: str,
    n: int,
    seed: int,
    bigout_bytes: int = 0,
    bigout_file: str = "",
    bigout_source: str = "text",
) -> Workload:
    """Build the n commands of a workload; the sleep durations are seeded, so every
    method and every repeat runs exactly the same tasks.

    bigout writes its text to ``bigout_file`` first, for its tasks to cat.  With
    ``bigout_source`` "zero" the tasks run ``head -c SIZE /dev/zero`` instead: NUL bytes,
    the worst case for a JSON transport, which escapes each one as six characters.
    """
    if name in ("echo", "memory"):
        return Workload(name, [f"echo {i}" for i in range(n)])
    if name == "sleep":
        rng = random.Random(seed)
        # 1 to 10 ms, as the original's benchmark: dash has no sleep builtin, so each
        # task is two processes (sh and sleep).
        return Workload(name, [f"sleep 0.{rng.randint(1, 10):03d} && echo {i}" for i in range(n)])
    if name == "bigout":
        # echo is a builtin and exec replaces the shell: the head costs no extra process.
        if bigout_source == "zero":
            writer, body = f"head -c {bigout_bytes} /dev/zero", bytes(bigout_bytes)
        else:
            body = bigout_text(bigout_bytes)
            Path(bigout_file).write_bytes(body)
            writer = f"cat {shlex.quote(bigout_file)}"
        return Workload(name, [f"echo @task {i}; exec {writer}" for i in range(n)], "@task ", body)
    raise ValueError(f"unknown workload {name!r}")


# -- the methods ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One method's run: the workload, the commands to run (a prefix when capped) and
    the files the external methods read their commands from."""

    workload: Workload
    commands: list[str]
    parallel: int
    lines_file: str
    nul_file: str
    ceiling: str | None


def _describe(index: int, done: subprocess.CompletedProcess[bytes]) -> str:
    return _describe_output(
        f"task {index} {done.args!r}", done.returncode, done.stdout, done.stderr
    )


def _take_completed(checker: Checker, index: int, done: subprocess.CompletedProcess[bytes]) -> None:
    describe = functools.partial(_describe, index, done)
    checker.add(index, done.returncode, done.stdout, done.stderr, describe)


def _noop() -> None:
    """A preexec_fn that does nothing but force CPython's fork path."""


def run_forloop(job: Job) -> Checker:
    """One subprocess.run after another: no pool at all."""
    checker = Checker(job.workload, len(job.commands))
    for i, cmd in enumerate(job.commands):
        done = subprocess.run(cmd, shell=True, capture_output=True, check=False)
        _take_completed(checker, i, done)
    return checker


def _threads(job: Job, preexec: Callable[[], None] | None) -> Checker:
    checker = Checker(job.workload, len(job.commands))

    def one(item: tuple[int, str]) -> tuple[int, subprocess.CompletedProcess[bytes]]:
        i, cmd = item
        return i, subprocess.run(
            cmd, shell=True, capture_output=True, check=False, preexec_fn=preexec
        )

    with ThreadPoolExecutor(job.parallel) as pool:
        # map() drops each result as it is yielded, so output is not all held at once.
        for i, done in pool.map(one, enumerate(job.commands)):
            _take_completed(checker, i, done)
    return checker


def run_threads(job: Job) -> Checker:
    """A thread pool in the caller: subprocess takes its vfork path, whatever the heap."""
    return _threads(job, None)


def run_threads_fork(job: Job) -> Checker:
    """The same forced onto the fork path: every task copies the caller's page tables."""
    return _threads(job, _noop)


def _mp_task(item: tuple[int, str]) -> tuple[int, subprocess.CompletedProcess[bytes]]:
    i, cmd = item
    return i, subprocess.run(cmd, shell=True, capture_output=True, check=False)


def _mp(job: Job, maxtasksperchild: int | None) -> Checker:
    checker = Checker(job.workload, len(job.commands))
    context = multiprocessing.get_context("fork")
    n, p = len(job.commands), job.parallel
    if maxtasksperchild is None:
        # Pool.map's own chunk size, kept while streaming results as they come.
        chunk, extra = divmod(n, 4 * p)
        chunksize = chunk + bool(extra) or 1
    else:
        chunksize = 1  # one task per chunk, so one fresh worker per task
    with context.Pool(p, maxtasksperchild=maxtasksperchild) as pool:
        tasks = enumerate(job.commands)
        for i, done in pool.imap_unordered(_mp_task, tasks, chunksize=chunksize):
            _take_completed(checker, i, done)
    return checker


def run_mp_fork(job: Job) -> Checker:
    """multiprocessing.Pool(p) with fork: the caller is forked once per worker."""
    return _mp(job, None)


def run_mp_fork_mtpc1(job: Job) -> Checker:
    """The same with maxtasksperchild=1: one fork of the caller per task."""
    return _mp(job, 1)


class ResultLike(Protocol):
    """What the harness reads of a leanpool ``Result``."""

    @property
    def id(self) -> object: ...
    @property
    def status(self) -> int: ...
    @property
    def ok(self) -> bool: ...
    @property
    def stdout_bytes(self) -> bytes: ...
    @property
    def stderr_bytes(self) -> bytes: ...


def _describe_result(result: ResultLike) -> str:
    return _describe_output(
        f"id {result.id!r} ({'ok' if result.ok else 'not ok'})",
        result.status,
        result.stdout_bytes,
        result.stderr_bytes,
    )


def take_result(checker: Checker, result: ResultLike) -> None:
    """Check one leanpool result against the task its id names, on its exact bytes."""
    describe = functools.partial(_describe_result, result)
    checker.add(
        result.id, result.status, result.stdout_bytes, result.stderr_bytes, describe, result.ok
    )


def run_leanpool(job: Job) -> Checker:
    """TaskRunner(p): add every task, with its index as id, then check the results as
    they stream."""
    from leanpool import TaskRunner  # main imported it before any timing

    checker = Checker(job.workload, len(job.commands))
    runner = TaskRunner(job.parallel)
    for i, cmd in enumerate(job.commands):
        runner.add(i, cmd)
    with RunnerWatch() as watch:
        for result in runner.run():
            take_result(checker, result)
    checker.runner_peak_kb = watch.peak_kb or None
    checker.watch_cpu_s = watch.cpu_s
    return checker


def run_leanpool_python(job: Job) -> Checker:
    """The same as ``leanpool``, its runner on the pure-Python path (no C engine): our
    own switch, which the runner inherits from the caller's environment."""
    os.environ["LEANPOOL_PURE_PYTHON"] = "1"
    try:
        return run_leanpool(job)
    finally:
        del os.environ["LEANPOOL_PURE_PYTHON"]


def _external(
    argv: list[str], stdin_path: str, env: dict[str, str] | None = None
) -> Iterator[bytes]:
    """Run a command that runs the tasks itself; yield its stdout in chunks as it comes.

    It is started with subprocess's vfork path, so the caller's heap costs it nothing;
    its commands come from a file written before the clock started.
    """
    with (
        open(stdin_path, "rb") as stdin,
        subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, env=env) as proc,
    ):
        assert proc.stdout is not None
        while chunk := proc.stdout.read(MIB):
            yield chunk
        if proc.wait() != 0:
            raise VerificationError(f"{argv[0]} exited with status {proc.returncode}")


def run_xargs(job: Job) -> Checker:
    """xargs -0 -P p -n1 /bin/sh -c: each task's output goes straight to one shared pipe."""
    argv = ["xargs", "-0", "-P", str(job.parallel), "-n", "1", "/bin/sh", "-c"]
    checker = Checker(job.workload, len(job.commands))
    chunks = _external(argv, job.nul_file)
    if job.workload.body:
        check_merged(checker, chunks, "xargs")
    else:
        check_grouped(checker, chunks, "xargs")
    return checker


def run_parallel(job: Job) -> Checker:
    """GNU parallel -j p, one command per input line, output grouped per task."""
    env = dict(os.environ, PARALLEL_SHELL="/bin/sh")
    argv = ["parallel", "--will-cite", "-j", str(job.parallel)]
    checker = Checker(job.workload, len(job.commands))
    check_grouped(checker, _external(argv, job.lines_file, env), "parallel")
    return checker


def run_ceiling(job: Job) -> Checker:
    """The C driver: one record per task, with the task's index, status and output."""
    assert job.ceiling is not None
    checker = Checker(job.workload, len(job.commands))
    check_records(checker, _external([job.ceiling, str(job.parallel)], job.lines_file), "ceiling")
    return checker


METHODS: Final[dict[str, Callable[[Job], Checker]]] = {
    "forloop": run_forloop,
    "threads": run_threads,
    "threads-fork": run_threads_fork,
    "mp-fork": run_mp_fork,
    "mp-fork-mtpc1": run_mp_fork_mtpc1,
    "leanpool": run_leanpool,
    "leanpool-py": run_leanpool_python,
    "xargs": run_xargs,
    "parallel": run_parallel,
    "ceiling": run_ceiling,
}


# -- measuring -----------------------------------------------------------------------------


class Probe:
    """A pure-Python CPU-bound loop in a caller thread: the caller's own work.

    Its rate while a method runs, against its rate alone, is what the method costs the
    program that uses it (GIL and CPU taken by the method's threads in the caller).
    """

    STEP: Final = 2000

    def __init__(self) -> None:
        self.iterations = 0
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="gil-probe", daemon=True)

    def _spin(self) -> None:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        x, count = 1, 0
        while not self._stop.is_set():
            for _ in range(self.STEP):
                x = (x * 1103515245 + 12345) & 0xFFFFFFFF
            count += self.STEP
        self.iterations = count
        self.cpu_s = time.thread_time() - cpu0
        self.wall_s = time.perf_counter() - wall0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> float:
        """Stop the loop; return its rate in iterations per second."""
        self._stop.set()
        self._thread.join()
        return self.iterations / self.wall_s if self.wall_s else 0.0

    @classmethod
    def rate_alone(cls, seconds: float = PROBE_ALONE_S) -> float:
        probe = cls()
        probe.start()
        time.sleep(seconds)
        return probe.stop()


@dataclass
class Sample:
    """One measured run of one method."""

    workload: str
    memory_mb: int
    caller_rss_mb: float
    method: str
    parallel: int
    n: int
    capped: bool
    repeat: int
    seconds: float
    tps: float
    mb_per_s: float | None
    caller_cpu_s: float
    children_cpu_s: float
    caller_peak_mb: float
    runner_peak_mb: float | None
    gil_ratio: float | None


def measure(
    job: Job, method: str, memory_mb: int, repeat: int, capped: bool, probe: bool
) -> Sample:
    """Run one method once, time it, and check its results: each as it arrives (in the
    timed part, so every method pays for its checks), then that none is missing."""
    fn = METHODS[method]
    reset_peak()
    rss = rss_bytes() / MIB
    alone = Probe.rate_alone() if probe else None
    gil = Probe() if probe else None
    if gil is not None:
        gil.start()
    t0, c0 = time.perf_counter(), cpu_times()
    checker = fn(job)
    seconds, c1 = time.perf_counter() - t0, cpu_times()
    gil_ratio = None
    probe_cpu = 0.0
    if gil is not None and alone:
        gil_ratio = gil.stop() / alone
        probe_cpu = gil.cpu_s
    peak_kb = status_kb("VmHWM") or 0
    n = len(job.commands)
    checker.verify(method)
    out_bytes = job.workload.output_bytes(n) if job.workload.body else None
    return Sample(
        workload=job.workload.name,
        memory_mb=memory_mb,
        caller_rss_mb=round(rss, 1),
        method=method,
        parallel=job.parallel,
        n=n,
        capped=capped,
        repeat=repeat,
        seconds=seconds,
        tps=n / seconds,
        mb_per_s=None if out_bytes is None else out_bytes / seconds / 1e6,
        # The probe's CPU is the caller's program and the watch's is ours: neither is
        # the method's cost.
        caller_cpu_s=c1[0] - c0[0] - probe_cpu - checker.watch_cpu_s,
        children_cpu_s=c1[1] - c0[1],
        caller_peak_mb=peak_kb / 1024,
        runner_peak_mb=None if checker.runner_peak_kb is None else checker.runner_peak_kb / 1024,
        gil_ratio=gil_ratio,
    )


@dataclass
class Summary:
    """One method at one caller size over its repeats: TPS by the chosen statistic."""

    workload: str
    memory_mb: int
    method: str
    parallel: int
    n: int
    capped: bool
    repeats: int
    tps: float
    tps_all: list[float]
    mb_per_s: float | None
    cpu_us_per_task: float
    children_cpu_us_per_task: float
    caller_peak_mb: float
    runner_peak_mb: float | None
    gil_ratio: float | None
    caller_rss_mb: float
    ratio_to_best: float = 0.0


def summarize(samples: Sequence[Sample], stat: str) -> Summary:
    """Reduce the repeats of one method: TPS best (or median); CPU and GIL ratio median
    (a typical run); peaks the maximum (what the machine had to provide)."""
    first = samples[0]
    tps_all = [s.tps for s in samples]
    tps = max(tps_all) if stat == "best" else statistics.median(tps_all)
    mbps = [s.mb_per_s for s in samples if s.mb_per_s is not None]
    gils = [s.gil_ratio for s in samples if s.gil_ratio is not None]
    runner = [s.runner_peak_mb for s in samples if s.runner_peak_mb is not None]
    return Summary(
        workload=first.workload,
        memory_mb=first.memory_mb,
        method=first.method,
        parallel=first.parallel,
        n=first.n,
        capped=first.capped,
        repeats=len(samples),
        tps=tps,
        tps_all=[round(t, 1) for t in tps_all],
        mb_per_s=(max(mbps) if stat == "best" else statistics.median(mbps)) if mbps else None,
        cpu_us_per_task=statistics.median(s.caller_cpu_s / s.n for s in samples) * 1e6,
        children_cpu_us_per_task=statistics.median(s.children_cpu_s / s.n for s in samples) * 1e6,
        caller_peak_mb=max(s.caller_peak_mb for s in samples),
        runner_peak_mb=max(runner) if runner else None,
        gil_ratio=statistics.median(gils) if gils else None,
        caller_rss_mb=first.caller_rss_mb,
    )


def print_block(rows: list[Summary], title: str) -> None:
    """The table for one workload at one caller size; sets each row's ratio_to_best."""
    best = max(r.tps for r in rows)
    for r in rows:
        r.ratio_to_best = r.tps / best
    columns: list[Column[Summary]] = [
        Column("method", 14, lambda r: r.method, left=True),
        Column("n", 6, lambda r: f"{r.n}{'*' if r.capped else ''}"),
        Column("TPS", 9, lambda r: f"{r.tps:.1f}"),
        Column("x best", 7, lambda r: f"{r.ratio_to_best:.2f}"),
        Column("caller CPU", 11, lambda r: f"{r.cpu_us_per_task:.0f}", "us/task"),
        Column("caller peak", 12, lambda r: f"{r.caller_peak_mb:.0f}", "RSS MB"),
        Column("runner peak", 12, lambda r: fmt(r.runner_peak_mb, ".1f"), "RSS MB"),
    ]
    # A row without the figure has no cell (its later cells move left), as it always had.
    if any(r.mb_per_s is not None for r in rows):
        columns.append(
            Column("MB/s", 8, lambda r: None if r.mb_per_s is None else f"{r.mb_per_s:.0f}")
        )
    if any(r.gil_ratio is not None for r in rows):
        columns.append(
            Column(
                "probe speed", 11, lambda r: None if r.gil_ratio is None else f"{r.gil_ratio:.2f}x"
            )
        )
    print(title)
    for line in table(columns, sorted(rows, key=lambda r: -r.tps)):
        print(line)
    if any(r.capped for r in rows):
        print("  * capped by --slow-cap: TPS over that many tasks, nothing extrapolated")
    print(
        "  xargs merges all output into one pipe: it does not capture output per task (on "
        "bigout only each task's head line and the byte total can be checked)",
        flush=True,
    )


# -- the memory workload -------------------------------------------------------------------


@dataclass
class MemoryRun:
    """A long leanpool run of tiny tasks: does anyone's memory grow with the task count?"""

    memory_mb: int
    n: int
    parallel: int
    seconds: float
    tps: float
    add_seconds: float
    caller_rss_before_add_mb: float
    caller_rss_before_run_mb: float
    caller_peak_during_run_mb: float
    caller_growth_during_add_mb: float
    caller_growth_during_run_mb: float
    runner_peak_mb: float | None
    progress: list[dict[str, float]] = field(default_factory=list)


def run_memory(n: int, parallel: int, memory_mb: int) -> MemoryRun:
    """Add n tasks (the caller builds no list of them), then check results as they
    stream, keeping one byte per task; report both processes' peaks."""
    from leanpool import TaskRunner  # main imported it before any timing

    reset_peak()
    before_add = rss_bytes()
    runner = TaskRunner(parallel)
    t0 = time.perf_counter()
    for i in range(n):
        runner.add(i, f"echo {i}")
    add_seconds = time.perf_counter() - t0
    peak_add = (status_kb("VmHWM") or 0) * 1024
    reset_peak()
    before_run = rss_bytes()
    memory = Workload("memory", [])
    checker = Checker(memory, n)
    progress: list[dict[str, float]] = []
    step = max(1, n // 10)
    t1 = time.perf_counter()
    with RunnerWatch(interval=0.05) as watch:
        for result in runner.run():
            take_result(checker, result)
            if checker.count % step == 0:
                elapsed = time.perf_counter() - t1
                point = {
                    "done": checker.count,
                    "seconds": round(elapsed, 2),
                    "caller_rss_mb": round(rss_bytes() / MIB, 1),
                    "runner_rss_mb": round((watch.current_kb() or 0) / 1024, 1),
                }
                progress.append(point)
                print(
                    f"  {checker.count:>9} done  {checker.count / elapsed:7.0f} tasks/s  "
                    f"caller RSS "
                    f"{point['caller_rss_mb']:.1f} MB  runner RSS {point['runner_rss_mb']:.1f} MB",
                    flush=True,
                )
    seconds = time.perf_counter() - t1
    checker.verify("leanpool")
    peak_run = (status_kb("VmHWM") or 0) * 1024
    return MemoryRun(
        memory_mb=memory_mb,
        n=n,
        parallel=parallel,
        seconds=seconds,
        tps=n / seconds,
        add_seconds=add_seconds,
        caller_rss_before_add_mb=before_add / MIB,
        caller_rss_before_run_mb=before_run / MIB,
        caller_peak_during_run_mb=peak_run / MIB,
        caller_growth_during_add_mb=(peak_add - before_add) / MIB,
        caller_growth_during_run_mb=(peak_run - before_run) / MIB,
        runner_peak_mb=watch.peak_kb / 1024 if watch.peak_kb else None,
        progress=progress,
    )


# -- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    met: bool
    detail: str


def _ratio_target(
    name: str,
    found: list[tuple[int, float]],
    ok: Callable[[float], bool],
    table: dict[tuple[str, int, str], Summary] | None = None,
    key: tuple[str, str, str] | None = None,
) -> Target:
    """MET when every ratio passes; with table and key (workload, method, other method),
    each ratio is followed by the paired median of the repeats, for reference."""
    parts = []
    for mb, r in found:
        part = f"{mb} MB: {r:.2f}x"
        if table is not None and key is not None:
            a, b = table.get((key[0], mb, key[1])), table.get((key[0], mb, key[2]))
            pr = paired(a.tps_all, b.tps_all) if a and b else None
            if pr is not None:
                part += f" (paired {pr:.2f}x)"
        parts.append(part)
    return Target(name, all(ok(r) for _, r in found), ", ".join(parts))


def evaluate_targets(summaries: list[Summary], memory_runs: list[MemoryRun]) -> list[Target]:
    """Each target of the issue for which this run collected the data."""
    table = {(s.workload, s.memory_mb, s.method): s for s in summaries}
    out: list[Target] = []
    tps: Callable[[Summary], float | None] = lambda s: s.tps  # noqa: E731
    for wl in ("echo", "sleep"):
        lean0, lean8 = table.get((wl, 0, "leanpool")), table.get((wl, 8000, "leanpool"))
        if lean0 and lean8:
            r = lean8.tps / lean0.tps
            detail = f"{lean8.tps:.0f} / {lean0.tps:.0f} = {r:.2f}x"
            ceil0, ceil8 = table.get((wl, 0, "ceiling")), table.get((wl, 8000, "ceiling"))
            if ceil0 and ceil8:
                # The two sizes ran minutes apart: relative to the ceiling, which does
                # not depend on the caller's size, the machine's drift cancels.
                norm = (lean8.tps / ceil8.tps) / (lean0.tps / ceil0.tps)
                detail += f" (as fractions of the ceiling: {norm:.2f}x)"
            out.append(
                Target(f"{wl}: leanpool at 8000 MB >= 0.95 x leanpool at 0 MB", r >= 0.95, detail)
            )
    for wl, den, factor in (
        ("echo", "xargs", 1.0),
        ("echo", "ceiling", 0.95),
        ("sleep", "ceiling", 0.95),
        ("echo", "parallel", 3.0),
    ):
        found = ratios(table, wl, "leanpool", den, tps)
        if found:
            out.append(
                _ratio_target(
                    f"{wl}: leanpool >= {factor:g} x {den}",
                    found,
                    at_least(factor),
                    table,
                    (wl, "leanpool", den),
                )
            )
    for wl in ("echo", "sleep"):
        for den in ("threads-fork", "mp-fork", "mp-fork-mtpc1"):
            found = ratios(table, wl, "leanpool", den, tps, memory=2000)
            if found:
                extra = (
                    " (not in the issue's list; for reference)" if den == "mp-fork-mtpc1" else ""
                )
                out.append(
                    _ratio_target(
                        f"{wl}: leanpool >= 10 x {den} at 2000 MB{extra}",
                        found,
                        at_least(10),
                        table,
                        (wl, "leanpool", den),
                    )
                )
    for wl in ("echo", "sleep", "bigout"):
        found = ratios(table, wl, "leanpool", "threads", lambda s: s.cpu_us_per_task)
        if found:
            out.append(
                _ratio_target(
                    f"{wl}: caller CPU/task, leanpool <= 1/5 of threads (ratio shown)",
                    found,
                    lambda r: r <= 0.2,
                )
            )
    for run in memory_runs:
        note = "" if run.n >= 1_000_000 else f" (only {run.n} tasks: indicative)"
        peak = run.runner_peak_mb or 0.0
        out.append(
            Target(f"{run.n} tasks: runner peak RSS <= 25 MB{note}", peak <= 25, f"{peak:.1f} MB")
        )
        growth = run.caller_growth_during_run_mb
        out.append(
            Target(
                f"{run.n} tasks: caller RSS growth <= 30 MB while streaming{note}",
                growth <= 30,
                f"{growth:.1f} MB",
            )
        )
    found = ratios(table, "bigout", "leanpool", "threads", lambda s: s.mb_per_s)
    if found:
        out.append(
            _ratio_target("bigout: leanpool MB/s >= 0.5 x threads", found, lambda r: r >= 0.5)
        )
    return out


# -- the self-check ------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeResult:
    """A leanpool Result as the harness reads it (``ResultLike``), made up or relabelled."""

    id: object
    status: int
    ok: bool
    stdout_bytes: bytes
    stderr_bytes: bytes = b""


@dataclass(frozen=True)
class SelfCase:
    """One result set for the checks: what it is, whether it must pass, how to feed it."""

    what: str
    must_pass: bool
    workload: Workload
    n: int
    feed: Callable[[Checker], None]

    def run(self) -> str | None:
        """Feed a fresh checker and verify it: the VerificationError's text, or None."""
        checker = Checker(self.workload, self.n)
        try:
            self.feed(checker)
            checker.verify(self.what.split(":", 1)[0])
        except VerificationError as exc:
            return str(exc)
        return None


def _record(index: int, status: int, out: bytes, err: bytes = b"") -> bytes:
    """One record as the ceiling writes it."""
    return f"{index} {status} {len(out)} {len(err)}\n".encode() + out + err


def _interleave(outputs: list[bytes], rng: random.Random, heads: list[bytes]) -> bytes:
    """Outputs as a shared pipe mixes them: each head whole (one short write), the rest
    in random pieces, the tasks' pieces interleaved at random."""
    queues: list[list[bytes]] = []
    for out, head in zip(outputs, heads, strict=True):
        queue, rest = [head], out[len(head) :]
        while rest:
            k = rng.randint(1, 3000)
            queue.append(rest[:k])
            rest = rest[k:]
        queues.append(queue)
    mixed = bytearray()
    live = list(range(len(queues)))
    while live:
        j = rng.randrange(len(live))
        queue = queues[live[j]]
        mixed += queue.pop(0)
        if not queue:
            live.pop(j)
    return bytes(mixed)


def _feed_results(results: list[FakeResult]) -> Callable[[Checker], None]:
    def feed(checker: Checker) -> None:
        for result in results:
            take_result(checker, result)

    return feed


def _feed_completed(pairs: list[tuple[int, int]]) -> Callable[[Checker], None]:
    """Results of a pool in the caller: (index the harness pairs it with, task it ran)."""

    def feed(checker: Checker) -> None:
        for index, task in pairs:
            done = subprocess.CompletedProcess(f"echo {task}", 0, f"{task}\n".encode(), b"")
            _take_completed(checker, index, done)

    return feed


def _feed_stream(
    check: Callable[[Checker, Iterable[bytes], str], None], data: bytes, source: str
) -> Callable[[Checker], None]:
    """A tool's stdout, cut into reads of an odd size so that outputs straddle them."""
    pieces = [data[i : i + 997] for i in range(0, len(data), 997)]
    return lambda checker: check(checker, pieces, source)


def _old_check_passes(results: list[FakeResult], n: int) -> bool:
    """What the harness checked before: the count, the statuses and the outputs' sum."""
    try:
        total = sum(int(r.stdout_bytes) for r in results)
    except ValueError:
        return False
    return len(results) == n and all(r.status == 0 for r in results) and total == n * (n - 1) // 2


Row = tuple[str, bool, "Callable[[Checker], None]"]
"""A self-check case's text, whether it must pass, and how to feed the checker."""


def selfcheck_cases() -> list[SelfCase]:
    """Right and wrong result sets, as each kind of method delivers them."""
    n, rng = 20, random.Random(7)
    order = rng.sample(range(n), n)
    echo = make_workload("echo", n, 1)

    def lean(label: Callable[[int], object] = int, **change: Any) -> list[FakeResult]:
        """Right results in a shuffled order, with ids label(i) and, for the task given as
        change's "task", the other fields changed."""
        at = change.pop("task", None)
        out = [FakeResult(label(i), 0, True, echo.head(i)) for i in order]
        return [dataclasses.replace(r, **change) if r.id == at else r for r in out]

    swap = {3: 7, 7: 3}
    all_zero = lean(lambda i: 0)
    old = " (the old count-and-sum check passed it)" if _old_check_passes(all_zero, n) else ""
    three = [r for r in lean() if r.id not in (4, 5, 6)]
    three += [FakeResult(5, 0, True, echo.head(i)) for i in (4, 5, 6)]

    def on(wl: Workload, count: int, table: list[Row]) -> list[SelfCase]:
        return [SelfCase(what, ok, wl, count, feed) for what, ok, feed in table]

    cases = on(
        echo,
        n,
        [
            ("leanpool: right results, in any order", True, _feed_results(lean())),
            ("leanpool: every result labelled id 0" + old, False, _feed_results(all_zero)),
            ("leanpool: ids 3 and 7 swapped", False, _feed_results(lean(lambda i: swap.get(i, i)))),
            ("leanpool: the results of 4, 5 and 6 all labelled 5", False, _feed_results(three)),
            ("leanpool: ids as strings '0'..'19'", False, _feed_results(lean(str))),
            ("leanpool: task 9 exited 1", False, _feed_results(lean(task=9, status=1))),
            ("leanpool: task 9 not ok (timed out)", False, _feed_results(lean(task=9, ok=False))),
            (
                "leanpool: task 12 printed '012'",
                False,
                _feed_results(lean(task=12, stdout_bytes=b"012\n")),
            ),
            (
                "leanpool: task 12 printed a byte more",
                False,
                _feed_results(lean(task=12, stdout_bytes=b"12\n\n")),
            ),
            (
                "leanpool: task 2 wrote to stderr",
                False,
                _feed_results(lean(task=2, stderr_bytes=b"oops\n")),
            ),
            (
                "leanpool: a result for id 20 too",
                False,
                _feed_results([*lean(), FakeResult(20, 0, True, b"20\n")]),
            ),
            ("leanpool: one result missing", False, _feed_results(lean()[1:])),
            ("threads: right", True, _feed_completed([(i, i) for i in order])),
            (
                "threads: each result paired with the next command",
                False,
                _feed_completed([(i, (i + 1) % n) for i in order]),
            ),
        ],
    )

    records = b"".join(_record(i, 0, echo.head(i)) for i in order)
    zeros = b"".join(_record(0, 0, echo.head(i)) for i in order)
    killed = b"".join(_record(i, -9 if i == 4 else 0, echo.head(i)) for i in order)
    lines = b"".join(echo.head(i) for i in order)
    cases += on(
        echo,
        n,
        [
            (
                "ceiling: right records, in any order",
                True,
                _feed_stream(check_records, records, "ceiling"),
            ),
            (
                "ceiling: every record labelled 0",
                False,
                _feed_stream(check_records, zeros, "ceiling"),
            ),
            (
                "ceiling: task 4 killed by SIGKILL",
                False,
                _feed_stream(check_records, killed, "ceiling"),
            ),
            (
                "ceiling: the stream ends inside a record",
                False,
                _feed_stream(check_records, records[:-1], "ceiling"),
            ),
            ("xargs: right lines, in any order", True, _feed_stream(check_grouped, lines, "xargs")),
            (
                "xargs: line 7 twice, line 8 missing",
                False,
                _feed_stream(check_grouped, lines.replace(b"\n8\n", b"\n7\n"), "xargs"),
            ),
            (
                "parallel: a stray line",
                False,
                _feed_stream(check_grouped, lines + b"hello\n", "parallel"),
            ),
        ],
    )

    m = 8
    big = Workload("bigout", [], "@task ", bigout_text(10_000))
    big_order = rng.sample(range(m), m)
    outputs = [big.head(i) + big.body for i in big_order]
    flipped = bytearray(outputs[0])
    flipped[5000] ^= 1
    bad_body = [FakeResult(big_order[0], 0, True, bytes(flipped))]
    bad_body += [FakeResult(i, 0, True, o) for i, o in zip(big_order[1:], outputs[1:], strict=True)]
    swap_heads = [
        FakeResult(big_order[1 - k] if k < 2 else i, 0, True, o)
        for k, (i, o) in enumerate(zip(big_order, outputs, strict=True))
    ]
    grouped = b"".join(outputs)
    heads = [big.head(i) for i in big_order]
    mixed = _interleave(outputs, rng, heads)
    repeated = _interleave(outputs, rng, [*heads[:-1], heads[0]])
    right_big = [FakeResult(i, 0, True, o) for i, o in zip(big_order, outputs, strict=True)]
    big_records = b"".join(_record(i, 0, o) for i, o in zip(big_order, outputs, strict=True))
    cases += on(
        big,
        m,
        [
            ("leanpool: right 10 kB outputs", True, _feed_results(right_big)),
            ("leanpool: one bit of one 10 kB output flipped", False, _feed_results(bad_body)),
            ("leanpool: two 10 kB outputs' ids swapped", False, _feed_results(swap_heads)),
            (
                "ceiling: right 10 kB outputs",
                True,
                _feed_stream(check_records, big_records, "ceiling"),
            ),
            (
                "parallel: right 10 kB outputs",
                True,
                _feed_stream(check_grouped, grouped, "parallel"),
            ),
            (
                "parallel: the last output a byte short",
                False,
                _feed_stream(check_grouped, grouped[:-1], "parallel"),
            ),
            (
                "xargs: 10 kB outputs interleaved in one pipe",
                True,
                _feed_stream(check_merged, mixed, "xargs"),
            ),
            (
                "xargs: one task's head replaced by another's",
                False,
                _feed_stream(check_merged, repeated, "xargs"),
            ),
            ("xargs: one byte lost", False, _feed_stream(check_merged, mixed[:-1], "xargs")),
        ],
    )
    return cases


def live_selfcheck_cases() -> list[SelfCase]:
    """The same checks on real runs of 20 ``echo i`` tasks: the ceiling, and leanpool
    when it imports; each right, and each mislabelled on its way to the checks."""
    n = 20
    echo = make_workload("echo", n, 1)
    cases: list[SelfCase] = []
    ceiling = build_ceiling()
    if ceiling is not None:
        with tempfile.TemporaryDirectory() as tmp:
            right, wrong = os.path.join(tmp, "right"), os.path.join(tmp, "wrong")
            Path(right).write_text("".join(f"{c}\n" for c in echo.commands))
            Path(wrong).write_text("".join("echo 0\n" for _ in echo.commands))
            real = b"".join(_external([ceiling, "4"], right))
            all_zero = b"".join(_external([ceiling, "4"], wrong))
        cases += [
            SelfCase(
                "ceiling (real run): right",
                True,
                echo,
                n,
                _feed_stream(check_records, real, "ceiling"),
            ),
            SelfCase(
                "ceiling (real run): every task prints 0",
                False,
                echo,
                n,
                _feed_stream(check_records, all_zero, "ceiling"),
            ),
        ]
    try:
        from leanpool import TaskRunner
    except Exception as exc:  # whatever the failure: the source may be mid-change
        print(f"  (leanpool does not import, its live cases are skipped: {exc!r})")
        return cases
    runner = TaskRunner(4)
    for i, cmd in enumerate(echo.commands):
        runner.add(i, cmd)
    got = [FakeResult(r.id, r.status, r.ok, r.stdout_bytes, r.stderr_bytes) for r in runner.run()]
    zero = [dataclasses.replace(r, id=0) for r in got]
    cases += [
        SelfCase("leanpool (real run): right", True, echo, n, _feed_results(got)),
        SelfCase(
            "leanpool (real run): every result relabelled id 0", False, echo, n, _feed_results(zero)
        ),
    ]
    return cases


def selfcheck() -> int:
    """Show that the checks refuse every wrong result set and pass every right one."""
    began = time.perf_counter()
    print("selfcheck: result sets fed to the harness's own checks; each wrong one must be refused")
    failures = 0
    for case in [*selfcheck_cases(), *live_selfcheck_cases()]:
        error = case.run()
        as_expected = (error is None) == case.must_pass
        failures += not as_expected
        verdict = "passed " if error is None else "refused"
        print(f"  {'ok  ' if as_expected else 'BAD '} {verdict}  {case.what}")
        if error is not None:
            print(f"                 VerificationError: {error.splitlines()[0]}")
    took = time.perf_counter() - began
    if failures:
        print(f"SELFCHECK FAILED: {failures} result sets were not judged as they must be")
        return 1
    print(f"selfcheck: every wrong result set refused, every right one passed ({took:.1f} s)")
    return 0


# -- the run -------------------------------------------------------------------------------


PROVENANCE: Final = (
    "leanpool_sha256 is the code measured: source_hash() of the imported leanpool package "
    "(the directory in 'leanpool', from which the runner is started too), taken before the "
    "first run and again at the end (leanpool_sha256_at_end). 'commit' is the git HEAD of "
    "the checkout holding bench.py at start: not the code measured when --src is given, or "
    "when src/ had uncommitted changes (checkout_src_dirty)."
)


def machine_info() -> dict[str, Any]:
    """What the numbers depend on, recorded with them; imports leanpool.

    A --src tree unpacked from git has the engine's source, not its build: it is built,
    as pip install would (the leanpool-py method measures the runner without it).
    """
    return {
        **machine_basics(),
        "provenance": PROVENANCE,
        **measured_leanpool(build=True),
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "checkout_src_dirty": src_dirty(),
        "argv": sys.argv,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare ways to run many shell tasks from a big Python caller.",
    )
    parser.add_argument(
        "-n",
        type=int,
        help="tasks per run (default per workload: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_TASKS.items())
        + ")",
    )
    parser.add_argument(
        "-m", default="0", help="caller memory in MiB; a comma list sweeps (0,500,2000)"
    )
    parser.add_argument("-p", type=int, help="pool size (default: echo/bigout/memory 8, sleep 16)")
    parser.add_argument(
        "-s",
        type=int,
        nargs="?",
        const=1,
        choices=(0, 1),
        help="the original's switch: 1 = sleep workload, 0 = echo",
    )
    parser.add_argument(
        "--workload", help="comma list of " + "|".join(WORKLOADS) + " (default echo)"
    )
    parser.add_argument(
        "--methods", help="comma list of " + ",".join(ALL_METHODS) + " (default all)"
    )
    parser.add_argument("-r", "--repeats", type=int, default=3, help="round-robin repeats (3)")
    parser.add_argument(
        "--stat",
        choices=("best", "median"),
        default="best",
        help="how repeats are reduced to one TPS (best)",
    )
    parser.add_argument(
        "--slow-cap",
        type=int,
        default=200,
        help="max tasks for " + ", ".join(sorted(SLOW_METHODS)) + " (200; 0: no cap)",
    )
    parser.add_argument(
        "--gil-probe",
        action="store_true",
        help="run a pure-Python loop in a caller thread and report its slowdown",
    )
    parser.add_argument(
        "--bigout-mb", type=float, default=4.0, help="MB each bigout task writes (4)"
    )
    parser.add_argument(
        "--bigout-source",
        choices=("text", "zero"),
        default="text",
        help="bigout tasks cat a text file (default) or head -c /dev/zero",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the sleep durations")
    parser.add_argument("--json", help="save raw samples, summaries and targets here")
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="run nothing: print the sweep tables and the targets of these saved runs",
    )
    parser.add_argument(
        "--selfcheck",
        action="store_true",
        help="run nothing: feed the result checks right and deliberately wrong result sets "
        "and show that each wrong one is refused (a few seconds)",
    )
    parser.add_argument(
        "--source-hash",
        metavar="DIR",
        help="run nothing: print source_hash() of this package directory (src/leanpool)",
    )
    parser.add_argument(
        "--src",
        help="import leanpool (and so start its runner) from this src directory, e.g. an "
        "unpacked 'git archive COMMIT src', instead of the installed one",
    )
    args = parser.parse_args(argv)
    if args.workload is None:
        args.workload = "sleep" if args.s == 1 else "echo"
    return args


def report(paths: Sequence[str]) -> int:
    """The tables and targets of saved runs together, e.g. a sweep plus the bigout and
    memory runs; a later file's row replaces an earlier one for the same method and size."""
    table: dict[tuple[str, int, str], Summary] = {}
    memory_runs: list[MemoryRun] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for row in data["summary"]:
            summary = Summary(**row)
            table[(summary.workload, summary.memory_mb, summary.method)] = summary
        memory_runs.extend(MemoryRun(**run) for run in data["memory"])
    summaries = list(table.values())
    print_sweep(summaries)
    print_targets(evaluate_targets(summaries, memory_runs))
    return 0


def print_targets(targets: list[Target]) -> None:
    if targets:
        print("\nTargets (only those this run collected data for):")
        for t in targets:
            print(f"  {'MET    ' if t.met else 'NOT MET'}  {t.name}: {t.detail}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    if args.selfcheck:
        return selfcheck()
    if args.source_hash:
        sha, files = source_hash(args.source_hash)
        print(f"{sha}  {args.source_hash} ({files} .py and .c files)")
        return 0
    workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    methods = [m.strip() for m in (args.methods or ",".join(ALL_METHODS)).split(",") if m.strip()]
    sizes = sorted({int(m) for m in args.m.split(",")})
    for name, known, kind in ((workloads, WORKLOADS, "workload"), (methods, ALL_METHODS, "method")):
        for item in name:
            if item not in known:
                print(f"unknown {kind} {item!r}; choose from {', '.join(known)}", file=sys.stderr)
                return 2
    notes: list[str] = []
    if "parallel" in methods and shutil.which("parallel") is None:
        methods.remove("parallel")
        notes.append("GNU parallel not found (run benchmarks/setup.sh): skipped")
    ceiling = build_ceiling() if "ceiling" in methods else None
    if "ceiling" in methods and ceiling is None:
        methods.remove("ceiling")
        notes.append("no C compiler (run benchmarks/setup.sh): ceiling skipped")
    for note in notes:
        print("note:", note)

    meta = machine_info()
    print(
        f"{meta['date']}  {meta['nproc']} CPUs, {meta['memory']}, kernel {meta['kernel']}, "
        f"Python {meta['python']}, /bin/sh -> {meta['bin_sh']}"
    )
    dirty = {None: "in an unknown state", True: "has uncommitted changes", False: "is clean"}
    print(
        f"measured: leanpool from {meta['leanpool']}, source sha256 {meta['leanpool_sha256']} "
        f"({meta['leanpool_py_files']} .py and .c files)\n"
        f"checkout: git HEAD {meta['commit']} of the repository holding bench.py, its src/ "
        f"{dirty[meta['checkout_src_dirty']]} (the HEAD is not the code measured with --src)"
    )
    scratch = tempfile.mkdtemp(prefix="leanpool-bench-")
    bigout_bytes = int(args.bigout_mb * 1e6)
    bigout_file = os.path.join(scratch, "big.txt")
    samples: list[Sample] = []
    summaries: list[Summary] = []
    memory_runs: list[MemoryRun] = []

    def save(targets: list[Target] | None = None) -> None:
        if not args.json:
            return
        data = {
            "meta": meta,
            "args": vars(args),
            "notes": notes,
            "samples": [asdict(s) for s in samples],
            "summary": [asdict(s) for s in summaries],
            "memory": [asdict(m) for m in memory_runs],
            "targets": [asdict(t) for t in targets or []],
        }
        save_json(args.json, data)

    heap = Heap()
    try:
        for mb in sizes:
            took = heap.grow_to(mb)
            print(
                f"\ncaller heap grown to {rss_bytes() / MIB:.0f} MB RSS for -m {mb} "
                f"({heap.items:,} items, {took:.1f} s)",
                flush=True,
            )
            for wl_name in workloads:
                p = args.p or DEFAULT_PARALLEL[wl_name]
                n = args.n or DEFAULT_TASKS[wl_name]
                if wl_name == "memory":
                    print(
                        f"== memory: {n:,} x 'echo i' with leanpool, p={p}, caller {mb} MB",
                        flush=True,
                    )
                    run = run_memory(n, p, mb)
                    memory_runs.append(run)
                    print(
                        f"  {run.tps:.0f} tasks/s; runner peak RSS "
                        f"{run.runner_peak_mb or 0:.1f} MB; caller RSS growth while streaming "
                        f"{run.caller_growth_during_run_mb:.1f} MB (during add(): "
                        f"{run.caller_growth_during_add_mb:.1f} MB, {run.add_seconds:.1f} s)",
                        flush=True,
                    )
                    save()
                    continue
                workload = make_workload(
                    wl_name, n, args.seed, bigout_bytes, bigout_file, args.bigout_source
                )
                lines_file = os.path.join(scratch, f"{wl_name}.lines")
                nul_file = os.path.join(scratch, f"{wl_name}.nul")
                Path(lines_file).write_text("".join(c + "\n" for c in workload.commands))
                Path(nul_file).write_text("".join(c + "\0" for c in workload.commands))
                jobs: dict[str, Job] = {}
                for method in methods:
                    cap = args.slow_cap if method in SLOW_METHODS and args.slow_cap > 0 else n
                    jobs[method] = Job(
                        workload, workload.commands[:cap], p, lines_file, nul_file, ceiling
                    )
                by_method: dict[str, list[Sample]] = {m: [] for m in methods}
                for rep in range(args.repeats):
                    for method in rotated(methods, rep):
                        job = jobs[method]
                        sample = measure(
                            job, method, mb, rep, len(job.commands) < n, args.gil_probe
                        )
                        samples.append(sample)
                        by_method[method].append(sample)
                rows = [summarize(by_method[m], args.stat) for m in methods]
                summaries.extend(rows)
                print_block(
                    rows,
                    f"== {wl_name}, p={p}, caller -m {mb} "
                    f"(RSS {rows[0].caller_rss_mb:.0f} MB), n={n}, "
                    f"{args.repeats} repeats ({args.stat})",
                )
                save()
    except VerificationError as exc:
        note_source_at_end(meta)
        save()
        print(f"\nVERIFICATION FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    note_source_at_end(meta)
    print_sweep(summaries)
    targets = evaluate_targets(summaries, memory_runs)
    print_targets(targets)
    save(targets)
    return 0


def print_sweep(summaries: list[Summary]) -> None:
    """The original's shape: method by caller memory, TPS, one table per workload."""
    for wl in dict.fromkeys(s.workload for s in summaries):
        rows = [s for s in summaries if s.workload == wl]
        sizes = sorted({s.memory_mb for s in rows})
        if len(sizes) < 2:
            continue
        print(f"\n{wl} (p={rows[0].parallel}), tasks/s by caller memory (MB); * = capped n")
        print(f"  {'method':<14}" + "".join(f"{mb:>10}" for mb in sizes))
        for method in dict.fromkeys(s.method for s in rows):
            cells = {s.memory_mb: s for s in rows if s.method == method}
            line = f"  {method:<14}"
            for mb in sizes:
                s = cells.get(mb)
                line += f"{'-':>10}" if s is None else f"{s.tps:>9.0f}{'*' if s.capped else ' '}"
            print(line)


if __name__ == "__main__":
    sys.exit(main())

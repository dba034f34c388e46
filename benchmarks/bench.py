#!/usr/bin/env python3
"""How fast can a big Python program run many small shell tasks, method by method?

Run from a checkout: ``python benchmarks/bench.py`` (``benchmarks/setup.sh`` first
installs GNU parallel, a C compiler and matplotlib when they are missing).

The question leanpool answers is what a *big* caller pays to start a task.  So the
caller first grows a realistic heap (many small, touched Python objects, the kind whose
page tables a fork must copy), then runs the same tasks with each method, side by side
in the same process, round-robin over the repeats so that the machine's drift hits all
methods alike.  Every run is checked (every task ran, exited 0 and gave the expected
output) and the harness stops loudly if one is not.

Per method and caller size it prints tasks per second, the ratio to the best method,
the caller's own CPU time per task (what the program doing the work cannot use), the
caller's peak RSS and, for leanpool, the runner's peak RSS.  ``--gil-probe`` also runs a
pure-Python loop in a caller thread and reports how much each method slows it.  At the
end it prints the project's performance targets as MET / NOT MET where it has the data.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import multiprocessing
import os
import platform
import random
import resource
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
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence


def _source_dir(argv: list[str]) -> str | None:
    """The --src option, read before argparse runs: it decides which leanpool is imported,
    so that a long run measures one fixed copy of the code while the checkout changes."""
    for i, arg in enumerate(argv):
        if arg == "--src" and i + 1 < len(argv):
            return os.path.abspath(argv[i + 1])
        if arg.startswith("--src="):
            return os.path.abspath(arg.split("=", 1)[1])
    return None


SOURCE_DIR: Final = _source_dir(sys.argv)
if SOURCE_DIR is not None:
    sys.path.insert(0, SOURCE_DIR)
elif importlib.util.find_spec("leanpool") is None:  # a bare checkout: use its source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import leanpool  # noqa: E402
from leanpool import Result, TaskRunner  # noqa: E402

HERE: Final = Path(__file__).resolve().parent
BUILD_DIR: Final = HERE / "_build"
MIB: Final = 1 << 20

ALL_METHODS: Final = (
    "forloop",
    "threads",
    "threads-fork",
    "mp-fork",
    "mp-fork-mtpc1",
    "leanpool",
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


class VerificationError(Exception):
    """A method's results were wrong: its numbers must not be reported."""


# -- /proc helpers -----------------------------------------------------------------------


def rss_bytes() -> int:
    """The caller's resident set size now, from /proc/self/statm (cheap to read often)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """Peak RSS (VmHWM) of a process in KiB; None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> None:
    """Reset the caller's VmHWM to its current RSS, so each run reports its own peak."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def find_runner() -> int | None:
    """The pid of the leanpool runner among the caller's children, if it runs yet."""
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"leanpool._runner" in cmdline:
                return int(pid)
    return None


class RunnerWatch:
    """Polls the runner's VmHWM from a caller thread while a leanpool run goes on.

    VmHWM is the kernel's own peak, so a 10 ms poll only misses what the runner adds in
    its last moments (its end record), not short spikes in between.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.pid: int | None = None
        self.peak_kb = 0
        self.cpu_s = 0.0
        """This thread's own CPU time: measurement, not the method's cost."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="runner-watch", daemon=True)

    def __enter__(self) -> RunnerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def current_kb(self) -> int | None:
        """The runner's current RSS (VmRSS), for progress lines."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def _watch(self) -> None:
        start = time.thread_time()
        while not self._stop.is_set():
            if self.pid is None:
                self.pid = find_runner()
            if self.pid is not None:
                kb = vm_hwm_kb(self.pid)
                if kb is not None:
                    self.peak_kb = max(self.peak_kb, kb)
            self._stop.wait(self.interval)
        self.cpu_s = time.thread_time() - start


# -- the caller's heap ---------------------------------------------------------------------


class Heap:
    """The caller's memory: many small tuples, ints and dicts, as a real program holds.

    One big bytes object would not do: its pages are few and untouched by a fork's
    copy-on-write bookkeeping in the same way, and a garbage collector never walks it.
    Every object is written when created, so every page is resident.
    """

    BLOCK: Final = 10_000

    def __init__(self) -> None:
        self._blocks: list[list[tuple[int, int, dict[str, int]]]] = []
        self.items = 0

    def grow_to(self, mb: int) -> float:
        """Add objects until the caller's RSS reaches mb MiB; return the seconds it took."""
        target = mb * MIB
        start = time.perf_counter()
        first = self.items
        while rss_bytes() < target:
            self._blocks.append([(k, -k, {"n": k}) for k in range(first, first + self.BLOCK)])
            first += self.BLOCK
        self.items = first
        return time.perf_counter() - start


# -- workloads -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What a method's run produced, reduced as it streams so the caller keeps nothing."""

    count: int = 0
    total: int = 0
    failures: int = 0
    wrong: int = 0
    runner_peak_kb: int | None = None
    watch_cpu_s: float = 0.0
    examples: list[str] = field(default_factory=list)
    """What the first bad results looked like, for the error message."""

    def add(self, status: int, value: int, each: int | None) -> None:
        """Count one task's result: its exit status and the number its output stands for."""
        self.count += 1
        self.total += value
        if status != 0:
            self.failures += 1
        if each is not None and value != each:
            self.wrong += 1

    def take(
        self, wl: Workload, status: int, output: bytes | str, describe: Callable[[], str]
    ) -> None:
        """Count one task's raw result; keep a description of the first few bad ones."""
        try:
            value = wl.digest(output)
        except ValueError:
            value = None
        bad = status != 0 or value is None or (wl.each is not None and value != wl.each)
        if bad and len(self.examples) < 5:
            self.examples.append(describe())
        if value is None:
            self.count += 1
            self.wrong += 1
            self.failures += status != 0
        else:
            self.add(status, value, wl.each)


@dataclass(frozen=True)
class Workload:
    """The tasks of one workload and how to check their output.

    ``kind`` "int": each task prints its index, and the outputs must sum to 0+1+..+n-1;
    "len": each task writes ``each`` bytes, counted per task where the method can.
    """

    name: str
    commands: list[str]
    kind: Literal["int", "len"]
    each: int | None = None

    def digest(self, output: bytes | str) -> int:
        """The number one task's output stands for."""
        return int(output) if self.kind == "int" else len(output)

    def expected_total(self, n: int) -> int:
        """What the digests of the first n tasks must add up to."""
        return n * (n - 1) // 2 if self.kind == "int" else n * (self.each or 0)

    def verify(self, tally: Tally, n: int, method: str) -> None:
        """Raise VerificationError unless the run of the first n tasks was complete and right."""
        problems = []
        if tally.count != n:
            problems.append(f"{tally.count} results for {n} tasks")
        if tally.failures:
            problems.append(f"{tally.failures} tasks failed")
        if tally.wrong:
            problems.append(f"{tally.wrong} tasks gave the wrong number of bytes")
        expected = self.expected_total(n)
        if tally.total != expected:
            problems.append(f"outputs add up to {tally.total}, expected {expected}")
        if problems:
            examples = "".join(f"\n  bad result: {e}" for e in tally.examples)
            raise VerificationError(f"{method} on {self.name}: " + "; ".join(problems) + examples)


def make_workload(name: str, n: int, seed: int, bigout_bytes: int, bigout_file: str) -> Workload:
    """Build the n commands of a workload; the sleep durations are seeded, so every
    method and every repeat runs exactly the same tasks."""
    if name in ("echo", "memory"):
        return Workload(name, [f"echo {i}" for i in range(n)], "int")
    if name == "sleep":
        rng = random.Random(seed)
        # 1 to 10 ms, as the original's benchmark: dash has no sleep builtin, so each
        # task is two processes (sh and sleep).
        return Workload(
            name, [f"sleep 0.{rng.randint(1, 10):03d} && echo {i}" for i in range(n)], "int"
        )
    if name == "bigout":
        return Workload(name, [f"cat {bigout_file}"] * n, "len", each=bigout_bytes)
    raise ValueError(f"unknown workload {name!r}")


def write_bigout_source(path: str, size: int, source: str) -> str:
    """The file each bigout task cats: text lines by default (what real tools print).

    With source "zero" the tasks run ``head -c SIZE /dev/zero`` instead: NUL bytes, the
    worst case for a JSON transport, which escapes each one as six characters.
    """
    if source == "zero":
        return path
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-leanpool-benchmark\n"
    data = (line * (size // len(line) + 1))[:size]
    Path(path).write_bytes(data)
    return path


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


def _describe(done: subprocess.CompletedProcess[bytes]) -> str:
    return (
        f"{done.args!r}: status {done.returncode}, stdout {done.stdout[:80]!r}, "
        f"stderr {done.stderr[:300]!r}"
    )


def _noop() -> None:
    """A preexec_fn that does nothing but force CPython's fork path."""


def run_forloop(job: Job) -> Tally:
    """One subprocess.run after another: no pool at all."""
    tally, wl = Tally(), job.workload
    for cmd in job.commands:
        done = subprocess.run(cmd, shell=True, capture_output=True, check=False)
        tally.take(wl, done.returncode, done.stdout, functools.partial(_describe, done))
    return tally


def _threads(job: Job, preexec: Callable[[], None] | None) -> Tally:
    tally, wl = Tally(), job.workload

    def one(cmd: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(cmd, shell=True, capture_output=True, check=False, preexec_fn=preexec)

    with ThreadPoolExecutor(job.parallel) as pool:
        # map() drops each result as it is yielded, so output is not all held at once.
        for done in pool.map(one, job.commands):
            tally.take(wl, done.returncode, done.stdout, functools.partial(_describe, done))
    return tally


def run_threads(job: Job) -> Tally:
    """A thread pool in the caller: subprocess takes its vfork path, whatever the heap."""
    return _threads(job, None)


def run_threads_fork(job: Job) -> Tally:
    """The same forced onto the fork path: every task copies the caller's page tables."""
    return _threads(job, _noop)


def _mp_task(cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, shell=True, capture_output=True, check=False)


def _mp(job: Job, maxtasksperchild: int | None) -> Tally:
    tally, wl = Tally(), job.workload
    context = multiprocessing.get_context("fork")
    n, p = len(job.commands), job.parallel
    if maxtasksperchild is None:
        # Pool.map's own chunk size, kept while streaming results as they come.
        chunk, extra = divmod(n, 4 * p)
        chunksize = chunk + bool(extra) or 1
    else:
        chunksize = 1  # one task per chunk, so one fresh worker per task
    with context.Pool(p, maxtasksperchild=maxtasksperchild) as pool:
        for done in pool.imap_unordered(_mp_task, job.commands, chunksize=chunksize):
            tally.take(wl, done.returncode, done.stdout, functools.partial(_describe, done))
    return tally


def run_mp_fork(job: Job) -> Tally:
    """multiprocessing.Pool(p) with fork: the caller is forked once per worker."""
    return _mp(job, None)


def run_mp_fork_mtpc1(job: Job) -> Tally:
    """The same with maxtasksperchild=1: one fork of the caller per task."""
    return _mp(job, 1)


def _describe_result(result: Result) -> str:
    return (
        f"task {result.id}: status {result.status}, signal {result.signal}, error "
        f"{result.error}, stdout {result.stdout[:80]!r}, stderr {result.stderr[:300]!r}"
    )


def run_leanpool(job: Job) -> Tally:
    """TaskRunner(p): add every task, then consume the results as they stream."""
    tally, wl = Tally(), job.workload
    runner = TaskRunner(job.parallel)
    for i, cmd in enumerate(job.commands):
        runner.add(i, cmd)
    with RunnerWatch() as watch:
        for result in runner.run():
            tally.take(
                wl, result.status, result.stdout, functools.partial(_describe_result, result)
            )
    tally.runner_peak_kb = watch.peak_kb or None
    tally.watch_cpu_s = watch.cpu_s
    return tally


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


def _tally_stream(job: Job, chunks: Iterator[bytes]) -> Tally:
    """Check the merged stdout of xargs or parallel: the per-task outputs are not
    separated, so only their lines (int) or their total size (len) can be checked."""
    tally, wl = Tally(), job.workload
    if wl.kind == "len":
        tally.total = sum(len(chunk) for chunk in chunks)
        tally.count = len(job.commands)  # cannot be told from merged output
        return tally
    for line in b"".join(chunks).split(b"\n"):
        if line:
            tally.add(0, int(line), None)
    return tally


def run_xargs(job: Job) -> Tally:
    """xargs -0 -P p -n1 /bin/sh -c: each task's output goes straight to one shared pipe."""
    argv = ["xargs", "-0", "-P", str(job.parallel), "-n", "1", "/bin/sh", "-c"]
    return _tally_stream(job, _external(argv, job.nul_file))


def run_parallel(job: Job) -> Tally:
    """GNU parallel -j p, one command per input line, output grouped per task."""
    env = dict(os.environ, PARALLEL_SHELL="/bin/sh")
    argv = ["parallel", "--will-cite", "-j", str(job.parallel)]
    return _tally_stream(job, _external(argv, job.lines_file, env))


def run_ceiling(job: Job) -> Tally:
    """The C driver: one line per task, "INDEX STATUS NBYTES VALUE"."""
    assert job.ceiling is not None
    tally, wl = Tally(), job.workload
    data = b"".join(_external([job.ceiling, str(job.parallel)], job.lines_file))
    for line in data.splitlines():
        _index, status, nbytes, value = (int(x) for x in line.split())
        tally.add(status, value if wl.kind == "int" else nbytes, wl.each)
    return tally


METHODS: Final[dict[str, Callable[[Job], Tally]]] = {
    "forloop": run_forloop,
    "threads": run_threads,
    "threads-fork": run_threads_fork,
    "mp-fork": run_mp_fork,
    "mp-fork-mtpc1": run_mp_fork_mtpc1,
    "leanpool": run_leanpool,
    "xargs": run_xargs,
    "parallel": run_parallel,
    "ceiling": run_ceiling,
}


def build_ceiling() -> str | None:
    """Compile ceiling.c into _build/ when it is missing or older than its source."""
    source, binary = HERE / "ceiling.c", BUILD_DIR / "ceiling"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return str(binary)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    BUILD_DIR.mkdir(exist_ok=True)
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return str(binary)


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


def cpu_times() -> tuple[float, float]:
    """(caller, waited-for descendants) user+sys CPU seconds.

    getrusage, not os.times: times() counts in 10 ms clock ticks, too coarse for
    microseconds per task over a one-second run.
    """
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def measure(
    job: Job, method: str, memory_mb: int, repeat: int, capped: bool, probe: bool
) -> Sample:
    """Run one method once, time it, and check its results (outside the timed part)."""
    fn = METHODS[method]
    reset_peak()
    rss = rss_bytes() / MIB
    alone = Probe.rate_alone() if probe else None
    gil = Probe() if probe else None
    if gil is not None:
        gil.start()
    t0, c0 = time.perf_counter(), cpu_times()
    tally = fn(job)
    seconds, c1 = time.perf_counter() - t0, cpu_times()
    gil_ratio = None
    probe_cpu = 0.0
    if gil is not None and alone:
        gil_ratio = gil.stop() / alone
        probe_cpu = gil.cpu_s
    peak_kb = vm_hwm_kb() or 0
    n = len(job.commands)
    job.workload.verify(tally, n, method)
    out_bytes = job.workload.expected_total(n) if job.workload.kind == "len" else None
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
        caller_cpu_s=c1[0] - c0[0] - probe_cpu - tally.watch_cpu_s,
        children_cpu_s=c1[1] - c0[1],
        caller_peak_mb=peak_kb / 1024,
        runner_peak_mb=None if tally.runner_peak_kb is None else tally.runner_peak_kb / 1024,
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
    """The table for one workload at one caller size."""
    print(title)
    best = max(r.tps for r in rows)
    header = f"  {'method':<14} {'n':>6} {'TPS':>9} {'x best':>7} {'caller CPU':>11}"
    header += f" {'caller peak':>12} {'runner peak':>12}"
    if any(r.mb_per_s is not None for r in rows):
        header += f" {'MB/s':>8}"
    if any(r.gil_ratio is not None for r in rows):
        header += f" {'probe speed':>11}"
    print(header)
    print(f"  {'':<14} {'':>6} {'':>9} {'':>7} {'us/task':>11} {'RSS MB':>12} {'RSS MB':>12}")
    for r in sorted(rows, key=lambda r: -r.tps):
        r.ratio_to_best = r.tps / best
        n = f"{r.n}{'*' if r.capped else ''}"
        runner = "-" if r.runner_peak_mb is None else f"{r.runner_peak_mb:.1f}"
        line = f"  {r.method:<14} {n:>6} {r.tps:>9.1f} {r.ratio_to_best:>7.2f}"
        line += f" {r.cpu_us_per_task:>11.0f} {r.caller_peak_mb:>12.0f} {runner:>12}"
        if r.mb_per_s is not None:
            line += f" {r.mb_per_s:>8.0f}"
        if r.gil_ratio is not None:
            line += f" {r.gil_ratio:>10.2f}x"
        print(line)
    if any(r.capped for r in rows):
        print("  * capped by --slow-cap: TPS over that many tasks, nothing extrapolated")
    print(
        "  xargs merges all output into one pipe: it does not capture output per task", flush=True
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
    """Add n tasks (the caller builds no list of them), then consume results as they
    stream, keeping only a running sum; report both processes' peaks."""
    reset_peak()
    before_add = rss_bytes()
    runner = TaskRunner(parallel)
    t0 = time.perf_counter()
    for i in range(n):
        runner.add(i, f"echo {i}")
    add_seconds = time.perf_counter() - t0
    peak_add = (vm_hwm_kb() or 0) * 1024
    reset_peak()
    before_run = rss_bytes()
    tally = Tally()
    memory = Workload("memory", [], "int")
    progress: list[dict[str, float]] = []
    step = max(1, n // 10)
    t1 = time.perf_counter()
    with RunnerWatch(interval=0.05) as watch:
        for result in runner.run():
            tally.take(
                memory, result.status, result.stdout, functools.partial(_describe_result, result)
            )
            if tally.count % step == 0:
                elapsed = time.perf_counter() - t1
                point = {
                    "done": tally.count,
                    "seconds": round(elapsed, 2),
                    "caller_rss_mb": round(rss_bytes() / MIB, 1),
                    "runner_rss_mb": round((watch.current_kb() or 0) / 1024, 1),
                }
                progress.append(point)
                print(
                    f"  {tally.count:>9} done  {tally.count / elapsed:7.0f} tasks/s  caller RSS "
                    f"{point['caller_rss_mb']:.1f} MB  runner RSS {point['runner_rss_mb']:.1f} MB",
                    flush=True,
                )
    seconds = time.perf_counter() - t1
    memory.verify(tally, n, "leanpool")
    peak_run = (vm_hwm_kb() or 0) * 1024
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


def _ratios(
    table: dict[tuple[str, int, str], Summary],
    workload: str,
    num: str,
    den: str,
    value: Callable[[Summary], float | None],
    memory: int | None = None,
) -> list[tuple[int, float]]:
    """(caller MB, value(num) / value(den)) at each caller size both were measured at."""
    out = []
    for (wl, mb, method), row in sorted(table.items()):
        if wl != workload or method != num or (memory is not None and mb != memory):
            continue
        other = table.get((wl, mb, den))
        a, b = value(row), None if other is None else value(other)
        if a is not None and b:
            out.append((mb, a / b))
    return out


def at_least(factor: float) -> Callable[[float], bool]:
    """A check that a ratio is at least factor."""
    return lambda ratio: ratio >= factor


def paired(a: Summary, b: Summary) -> float | None:
    """The median over repeats of a's TPS over b's in the same repeat.

    Repeats are interleaved, so one repeat's runs of a and b saw the same machine: on a
    shared, noisy machine this ratio is steadier than best against best.
    """
    pairs = [x / y for x, y in zip(a.tps_all, b.tps_all, strict=False) if y]
    return statistics.median(pairs) if pairs else None


def _ratio_target(
    name: str,
    ratios: list[tuple[int, float]],
    ok: Callable[[float], bool],
    table: dict[tuple[str, int, str], Summary] | None = None,
    key: tuple[str, str, str] | None = None,
) -> Target:
    """MET when every ratio passes; with table and key (workload, method, other method),
    each ratio is followed by the paired median of the repeats, for reference."""
    parts = []
    for mb, r in ratios:
        part = f"{mb} MB: {r:.2f}x"
        if table is not None and key is not None:
            a, b = table.get((key[0], mb, key[1])), table.get((key[0], mb, key[2]))
            pr = paired(a, b) if a and b else None
            if pr is not None:
                part += f" (paired {pr:.2f}x)"
        parts.append(part)
    return Target(name, all(ok(r) for _, r in ratios), ", ".join(parts))


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
    for den, factor in (("xargs", 1.0), ("ceiling", 0.90), ("parallel", 3.0)):
        ratios = _ratios(table, "echo", "leanpool", den, tps)
        if ratios:
            out.append(
                _ratio_target(
                    f"echo: leanpool >= {factor:g} x {den}",
                    ratios,
                    at_least(factor),
                    table,
                    ("echo", "leanpool", den),
                )
            )
    for wl in ("echo", "sleep"):
        for den in ("threads-fork", "mp-fork", "mp-fork-mtpc1"):
            ratios = _ratios(table, wl, "leanpool", den, tps, memory=2000)
            if ratios:
                extra = (
                    " (not in the issue's list; for reference)" if den == "mp-fork-mtpc1" else ""
                )
                out.append(
                    _ratio_target(
                        f"{wl}: leanpool >= 10 x {den} at 2000 MB{extra}",
                        ratios,
                        at_least(10),
                        table,
                        (wl, "leanpool", den),
                    )
                )
    for wl in ("echo", "sleep", "bigout"):
        ratios = _ratios(table, wl, "leanpool", "threads", lambda s: s.cpu_us_per_task)
        if ratios:
            out.append(
                _ratio_target(
                    f"{wl}: caller CPU/task, leanpool <= 1/5 of threads (ratio shown)",
                    ratios,
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
    ratios = _ratios(table, "bigout", "leanpool", "threads", lambda s: s.mb_per_s)
    if ratios:
        out.append(
            _ratio_target("bigout: leanpool MB/s >= 0.5 x threads", ratios, lambda r: r >= 0.5)
        )
    return out


# -- the run -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the numbers depend on, recorded with them."""
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0]
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=False,
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": len(os.sched_getaffinity(0)),
        "memory": meminfo.split(":", 1)[1].strip(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bin_sh": os.path.realpath("/bin/sh"),
        "commit": git.stdout.strip() or None,
        "leanpool": os.path.dirname(leanpool.__file__ or ""),
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
    print(f"leanpool from {meta['leanpool']} (checkout at {meta['commit']})")
    scratch = tempfile.mkdtemp(prefix="leanpool-bench-")
    bigout_bytes = int(args.bigout_mb * 1e6)
    bigout_file = write_bigout_source(
        os.path.join(scratch, "big.txt"), bigout_bytes, args.bigout_source
    )
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
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")

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
                if args.bigout_source == "zero" and wl_name == "bigout":
                    workload = Workload(
                        "bigout",
                        [f"head -c {bigout_bytes} /dev/zero"] * n,
                        "len",
                        each=bigout_bytes,
                    )
                else:
                    workload = make_workload(wl_name, n, args.seed, bigout_bytes, bigout_file)
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
                    # Rotate the order each repeat, so no method always runs first or last.
                    order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
                    for method in order:
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
        save()
        print(f"\nVERIFICATION FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

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

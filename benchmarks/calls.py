#!/usr/bin/env python3
"""Python functions as tasks: leanpool's ``Executor`` against the usual process pools.

Run from a checkout: ``python benchmarks/calls.py`` (``pip install -e '.[bench]'`` first
for loky, pebble and mpire; a method whose package does not import is skipped, and the
output says so).

Every method runs the same module-level functions of this file, one task per call (no
chunking), with the same number of workers:

- ``tiny``: ``ident(x)``, which returns its argument.  Each run starts a pool, makes one
  call and waits for it (*first result*: from creating the pool, so worker start is in
  it whenever the pool starts its workers), makes ``--tiny-warm`` calls, then times
  ``--tiny-n`` calls (*warm* calls/s), then shuts the pool down.  *Overall* calls/s is
  every call of the run over the whole run, pool start and shutdown included.
- ``cpu``: ``busy(ms)``, a loop that burns ``--busy-ms`` ms of its thread's CPU time;
  the same phases.  Efficiency is calls/s against ``min(workers, CPUs) / busy time``.
- ``memory``: ``--memory-n`` calls of ``ident`` over a generator, consumed as they
  stream, through each method's idiomatic streaming form; the caller's RSS before, while
  and after.  One fresh process per method (``--child memory``), at 0 MB.
- ``crash``: ``--crash-n`` (1,000) calls of ``crash_on(x)``, which reads address 0 (a
  segfault in the worker) for one input and returns its argument for the others; how
  many of the good results each method delivers, in a fresh process per method
  (``--child crash``) that is killed after ``--crash-timeout`` seconds ("hung").
- ``profile``: where a leanpool call's time goes: each process's and each caller
  thread's CPU per call from ``/proc`` (every method), the caller's ``submit`` loop
  timed and under ``cProfile``, and, when installed, ``py-spy``, ``strace -c`` and
  ``perf record`` attached to the caller, the runner and one worker.

``tiny`` and ``cpu`` run from a caller that first grows its heap to each ``--sizes``
MiB (many small touched objects: ``harness.Heap``), round-robin over the methods,
the order rotating from one repeat to the next; each method's rate is also given as
the *paired* ratio to the baseline (``ProcessPoolExecutor`` with fork, the default on
Linux before Python 3.14): the median over the repeats of the method's rate over the
baseline's in the same repeat.  Every value is checked against its input.  Each run
also records the caller's CPU per call, its reaped descendants' (workers, runner), and
the CPU that processes outside its tree took meanwhile (the noise it suffered).  At the
end the project's targets are printed as MET / NOT MET.

Results and how to read them: ``docs/calls-benchmarks.md``.  The measuring kit (/proc
probes, the heap, paired statistics, the record, tables) is ``harness.py``'s.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import faulthandler
import functools
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from harness import (  # benchmarks/harness.py, beside this file
    MIB,
    Column,
    Heap,
    VerificationError,
    children_of,
    cmdline,
    cpu_times,
    descendants,
    find_runner,
    fmt_x,
    foreign_cpu,
    foreign_load,
    git,
    higher_peak,
    machine_busy_s,
    measured_leanpool,
    memory_total,
    note_source_at_end,
    now_text,
    paired,
    remember_ours,
    reset_peak,
    rotated,
    rss_bytes,
    run_text,
    save_json,
    src_dirty,
    stat_cpu_s,
    status_kb,
    table,
    top_foreign,
)
from srcpath import use_source_dir  # benchmarks/srcpath.py, beside this file

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence


SOURCE_DIR: Final = use_source_dir(sys.argv)
# leanpool and the other pools are imported where they are used: a worker that imports
# this file to find its functions (spawn, forkserver, leanpool) pays for none of them.

CRASH_AT: Final = 500
"""The input for which ``crash_on`` segfaults."""
BASELINE: Final = "ppe-fork"
RUN_TIMEOUT_S: Final = 900
"""A throughput run that takes longer than this dumps every thread's stack and ends the
script (the JSON saved so far stays): a hang must not stall the whole benchmark."""


# -- the calls: module-level, so that every pool can send them by reference -----------------


def ident(x: Any) -> Any:
    """The tiny function: return the argument."""
    return x


def busy(ms: float) -> float:
    """Burn ``ms`` milliseconds of this thread's CPU time; return ``ms``."""
    end = time.thread_time() + ms / 1000
    x = 0
    while time.thread_time() < end:
        for _ in range(200):
            x += 1
    return ms


def crash_on(x: int) -> int:
    """Return x, except for ``CRASH_AT``: then read address 0, a segfault."""
    if x == CRASH_AT:
        import ctypes

        ctypes.string_at(0)
    return x


# -- where the calls' processes come from ------------------------------------------------


def role_of(pid: int, parent: int | str) -> str:
    """What a descendant process is, from its command line: a forkserver's children
    carry its command line, but they are its workers."""
    line = cmdline(pid)
    if b"leanpool._runner.main" in line:
        return "runner"
    if b"forkserver" in line and parent == "self":
        return "forkserver"
    if b"resource_tracker" in line:
        return "resource tracker"
    return "workers"  # leanpool's, forks of the caller, spawned interpreters


# -- the methods ---------------------------------------------------------------------------


class Method:
    """One way to run calls in other processes: start a pool, run calls through it (one
    task per call, values in the order of the inputs), stop it."""

    name: ClassVar[str] = ""
    what: ClassVar[str] = ""
    package: ClassVar[str | None] = None
    """The pip distribution it needs, for its version in the record."""
    forks_caller: ClassVar[bool] = False
    """Whether its workers are forks of the caller (they are then copies of its heap)."""
    streams: ClassVar[str | None] = None
    """Its idiomatic streaming form, for the memory test; None: not in that test."""
    crash_api: ClassVar[str] = ""
    """How the crash test collects its results."""

    def start(self, workers: int) -> None:
        raise NotImplementedError

    def calls(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def stream(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def deliver(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        emit: Callable[[Any, Any, BaseException | None], None],
    ) -> None:
        """Every result the method delivers, as (input, value, exception).  By default
        in order through ``calls``, which stops at the first exception, as a map does."""
        values = self.calls(fn, items)
        for x in items:
            try:
                value = next(values)
            except Exception as exc:
                emit(x, None, exc)
                return
            emit(x, value, None)


class FuturesMethod(Method):
    """A pool that returns one Future per call."""

    crash_api = "one future per call, collected with as_completed"

    def submit(self, fn: Callable[[Any], Any], x: Any) -> cf.Future[Any]:
        raise NotImplementedError

    def calls(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        futures = [self.submit(fn, x) for x in items]
        return (f.result() for f in futures)

    def deliver(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        emit: Callable[[Any, Any, BaseException | None], None],
    ) -> None:
        futures = {self.submit(fn, x): x for x in items}
        for future in cf.as_completed(futures):
            try:
                value = future.result()
            except Exception as exc:
                emit(futures[future], None, exc)
            else:
                emit(futures[future], value, None)


class LeanpoolSubmit(FuturesMethod):
    name = "leanpool-submit"
    what = "leanpool.Executor(max_workers).submit, one future per call"

    def start(self, workers: int) -> None:
        from leanpool import Executor

        self.ex = Executor(max_workers=workers)

    def submit(self, fn: Callable[[Any], Any], x: Any) -> cf.Future[Any]:
        return self.ex.submit(fn, x)

    def stream(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        return self.ex.map(fn, items)

    def stop(self) -> None:
        self.ex.shutdown(wait=True)


class LeanpoolMap(LeanpoolSubmit):
    name = "leanpool-map"
    what = "leanpool.Executor(max_workers).map (lazy, in order)"
    streams = "Executor.map over a generator (lazy, bounded window)"
    crash_api = "Executor.map, in order: stops at the first exception, as map does"

    def calls(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        return self.ex.map(fn, items)

    def deliver(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        emit: Callable[[Any, Any, BaseException | None], None],
    ) -> None:
        Method.deliver(self, fn, items, emit)


class LeanpoolCallFailed(Exception):
    """A TaskRunner call's result that is not ok, as text."""


class LeanpoolTaskRunner(Method):
    name = "leanpool-taskrunner"
    what = "TaskRunner(workers).add_call per call, then run(); each phase is a new run"
    crash_api = "TaskRunner.run(), every Result (ok or not)"

    def start(self, workers: int) -> None:
        self.workers = workers

    def _run(self, fn: Callable[[Any], Any], items: Sequence[Any], ordered: bool) -> Iterator[Any]:
        from leanpool import TaskRunner

        runner = TaskRunner(self.workers)
        for i, x in enumerate(items):
            runner.add_call(i, fn, (x,))
        return runner.run(ordered=ordered)

    def calls(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        for result in self._run(fn, items, ordered=True):
            if not result.ok:
                raise LeanpoolCallFailed(f"{result.error!r} signal={result.signal}")
            yield result.value

    def deliver(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        emit: Callable[[Any, Any, BaseException | None], None],
    ) -> None:
        for result in self._run(fn, items, ordered=False):
            x = items[int(result.id)]  # the ids are the indexes given
            if result.ok:
                emit(x, result.value, None)
            else:
                error = result.error
                text = error["type"] if isinstance(error, dict) else str(error)
                emit(x, None, LeanpoolCallFailed(f"{text} (signal {result.signal})"))

    def stop(self) -> None:
        pass


class ProcessPool(FuturesMethod):
    context: ClassVar[str] = ""
    streams: ClassVar[str | None] = (
        "ProcessPoolExecutor.map over a generator (submits every item at once)"
    )

    def start(self, workers: int) -> None:
        ctx = multiprocessing.get_context(self.context)
        self.ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)

    def submit(self, fn: Callable[[Any], Any], x: Any) -> cf.Future[Any]:
        return self.ex.submit(fn, x)

    def stream(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        return self.ex.map(fn, items)

    def stop(self) -> None:
        self.ex.shutdown(wait=True)


class PpeFork(ProcessPool):
    name = "ppe-fork"
    what = "concurrent.futures.ProcessPoolExecutor, mp_context fork, submit per call"
    context = "fork"
    forks_caller = True


class PpeForkserver(ProcessPool):
    name = "ppe-forkserver"
    what = "the same with mp_context forkserver"
    context = "forkserver"
    streams = None  # the caller's side of map is the same as ppe-fork's


class PpeSpawn(ProcessPool):
    name = "ppe-spawn"
    what = "the same with mp_context spawn"
    context = "spawn"
    streams = None


class MpApply(Method):
    name = "mp-apply"
    what = "multiprocessing fork Pool(workers).apply_async per call"
    forks_caller = True
    crash_api = "apply_async with callback and error_callback, waiting for all 1,000"

    def start(self, workers: int) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(workers)

    def calls(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        pending = [self.pool.apply_async(fn, (x,)) for x in items]
        return (r.get() for r in pending)

    def deliver(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        emit: Callable[[Any, Any, BaseException | None], None],
    ) -> None:
        lock, done, count = threading.Lock(), threading.Event(), [0]

        def one(x: Any, value: Any, error: BaseException | None) -> None:
            emit(x, value, error)
            with lock:
                count[0] += 1
                if count[0] == len(items):
                    done.set()

        def on_value(x: Any, value: Any) -> None:
            one(x, value, None)

        def on_error(x: Any, error: BaseException) -> None:
            one(x, None, error)

        for x in items:
            self.pool.apply_async(
                fn,
                (x,),
                callback=functools.partial(on_value, x),
                error_callback=functools.partial(on_error, x),
            )
        done.wait()

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()


class MpImap(MpApply):
    name = "mp-imap"
    what = "multiprocessing fork Pool(workers).imap, chunksize=1"
    streams = "Pool.imap(chunksize=1) over a generator"
    crash_api = "Pool.imap, in order"

    def calls(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        return self.pool.imap(fn, items, chunksize=1)

    def stream(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        return self.pool.imap(fn, items, chunksize=1)

    def deliver(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        emit: Callable[[Any, Any, BaseException | None], None],
    ) -> None:
        Method.deliver(self, fn, items, emit)


class Loky(FuturesMethod):
    name = "loky"
    what = "loky.ProcessPoolExecutor(max_workers), submit per call (a fresh pool per run)"
    package = "loky"
    streams = "loky ProcessPoolExecutor.map over a generator"

    def start(self, workers: int) -> None:
        import loky

        self.ex: Any = loky.ProcessPoolExecutor(max_workers=workers)

    def submit(self, fn: Callable[[Any], Any], x: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = self.ex.submit(fn, x)
        return future

    def stream(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        values: Iterator[Any] = self.ex.map(fn, items)
        return values

    def stop(self) -> None:
        self.ex.shutdown(wait=True)


class Pebble(FuturesMethod):
    name = "pebble"
    what = "pebble.ProcessPool(max_workers).schedule per call (default context: fork)"
    package = "pebble"
    forks_caller = True
    streams = "ProcessPool.map(chunksize=1) over a generator"

    def start(self, workers: int) -> None:
        import pebble

        self.pool: Any = pebble.ProcessPool(max_workers=workers)

    def submit(self, fn: Callable[[Any], Any], x: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = self.pool.schedule(fn, args=(x,))
        return future

    def stream(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        values: Iterator[Any] = self.pool.map(fn, items, chunksize=1).result()
        return values

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()


class Mpire(Method):
    name = "mpire"
    what = "mpire.WorkerPool(n_jobs, keep_alive=True).map, chunk_size=1 (default: fork)"
    package = "mpire"
    forks_caller = True
    streams = "WorkerPool.imap(chunk_size=1) over a generator"
    crash_api = "WorkerPool.map: one list, or an exception"

    def start(self, workers: int) -> None:
        from mpire.pool import WorkerPool

        self.pool: Any = WorkerPool(n_jobs=workers, keep_alive=True)

    def calls(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        values: list[Any] = self.pool.map(fn, items, chunk_size=1)
        return iter(values)

    def stream(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        values: Iterator[Any] = self.pool.imap(fn, items, chunk_size=1)
        return values

    def stop(self) -> None:
        self.pool.stop_and_join()


METHODS: Final[dict[str, type[Method]]] = {
    m.name: m
    for m in (
        LeanpoolSubmit,
        LeanpoolMap,
        LeanpoolTaskRunner,
        PpeFork,
        PpeForkserver,
        PpeSpawn,
        MpApply,
        MpImap,
        Loky,
        Pebble,
        Mpire,
    )
}
LEANPOOL: Final = ("leanpool-submit", "leanpool-map")


def package_version(method: type[Method]) -> str | None:
    """The version of the package a method needs; raises ImportError if it is missing."""
    import importlib.metadata  # here: a worker that imports this file needs none of it

    if method.package is None:
        return None
    importlib.import_module(method.package)
    return importlib.metadata.version(method.package)


# -- the throughput runs -------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One throughput workload: the function, its inputs, how many calls of each phase."""

    name: str
    fn: Callable[[Any], Any]
    n: int
    warm: int
    busy_s: float | None = None

    def items(self, start: int, stop: int) -> list[Any]:
        if self.busy_s is not None:
            return [self.busy_s * 1000] * (stop - start)
        return list(range(start, stop))


def check(method: Method, part: Part, start: int, stop: int) -> None:
    """Run calls [start, stop) of a part and check every value against its input."""
    items = part.items(start, stop)
    got = 0
    for x, value in zip(items, method.calls(part.fn, items), strict=True):
        if value != x:
            raise VerificationError(f"{method.name}: call of {x!r} returned {value!r}")
        got += 1
    if got != len(items):  # pragma: no cover  # zip(strict=True) says so first
        raise VerificationError(f"{method.name}: {got} values for {len(items)} calls")


@dataclass
class Sample:
    """One run of one method at one caller size."""

    part: str
    memory_mb: int
    caller_rss_mb: float
    method: str
    workers: int
    n: int
    warm: int
    repeat: int
    start_s: float
    first_s: float
    """From creating the pool to the first result in hand (worker start included)."""
    submit_first_s: float
    """From the first submit (after the pool's constructor returned) to its result."""
    overall_s: float
    warm_s: float
    stop_s: float
    overall_rate: float
    warm_rate: float
    caller_cpu_us: float
    """The caller's own CPU (every thread) per call, over the whole run."""
    own_cpu_us: float
    """The caller's and its reaped descendants' CPU per call (pool workers, runner),
    pool start included; a forkserver's workers are not reaped by the caller, so
    ppe-forkserver's figure leaves them out."""
    other_load: float
    """Other processes' CPU during the run (``foreign_cpu``), as a share of all CPUs:
    the noise this run suffered."""
    top_other: str
    """The other process that took the most CPU during the run."""
    efficiency: float | None
    warm_efficiency: float | None


def measure(
    method: Method, part: Part, memory_mb: int, repeat: int, workers: int, cpus: int
) -> Sample:
    reset_peak()
    rss = rss_bytes() / MIB
    faulthandler.dump_traceback_later(RUN_TIMEOUT_S, exit=True)
    try:
        f0 = foreign_cpu()
        t0, (c0, k0) = time.perf_counter(), cpu_times()
        method.start(workers)
        ts = time.perf_counter()
        check(method, part, 0, 1)
        tf = time.perf_counter()
        check(method, part, 1, 1 + part.warm)
        t1 = time.perf_counter()
        check(method, part, 1 + part.warm, 1 + part.warm + part.n)
        t2 = time.perf_counter()
        remember_ours()
        method.stop()
        t3, (c3, k3) = time.perf_counter(), cpu_times()
        f3 = foreign_cpu()
    finally:
        faulthandler.cancel_dump_traceback_later()
    total = 1 + part.warm + part.n
    efficiency = warm_efficiency = None
    if part.busy_s is not None:
        ideal = min(workers, cpus) / part.busy_s  # calls/s with every usable CPU busy
        efficiency = total / (t3 - t0) / ideal
        warm_efficiency = part.n / (t2 - t1) / ideal
    return Sample(
        part=part.name,
        memory_mb=memory_mb,
        caller_rss_mb=round(rss, 1),
        method=method.name,
        workers=workers,
        n=part.n,
        warm=part.warm,
        repeat=repeat,
        start_s=ts - t0,
        first_s=tf - t0,
        submit_first_s=tf - ts,
        overall_s=t3 - t0,
        warm_s=t2 - t1,
        stop_s=t3 - t2,
        overall_rate=total / (t3 - t0),
        warm_rate=part.n / (t2 - t1),
        caller_cpu_us=(c3 - c0) / total * 1e6,
        own_cpu_us=(c3 - c0 + k3 - k0) / total * 1e6,
        other_load=foreign_load(f0, f3, t3 - t0, cpus),
        top_other=top_foreign(f0, f3),
        efficiency=efficiency,
        warm_efficiency=warm_efficiency,
    )


@dataclass
class Summary:
    """One method, one part, one caller size, over its repeats."""

    part: str
    memory_mb: int
    method: str
    repeats: int
    overall_best: float
    overall_median: float
    warm_best: float
    warm_median: float
    first_best_s: float
    first_median_s: float
    submit_first_median_s: float
    caller_cpu_us: float
    own_cpu_us: float
    other_load_max: float
    efficiency_best: float | None
    warm_efficiency_best: float | None
    overall_all: list[float]
    warm_all: list[float]
    first_all: list[float]
    paired_overall: float | None = None
    """Median over the repeats of this rate / the baseline's in the same repeat."""
    paired_warm: float | None = None


def summarize(samples: Sequence[Sample]) -> Summary:
    first = samples[0]
    overall = [s.overall_rate for s in samples]
    warm = [s.warm_rate for s in samples]
    firsts = [s.first_s for s in samples]
    effs = [s.efficiency for s in samples if s.efficiency is not None]
    weffs = [s.warm_efficiency for s in samples if s.warm_efficiency is not None]
    return Summary(
        part=first.part,
        memory_mb=first.memory_mb,
        method=first.method,
        repeats=len(samples),
        overall_best=max(overall),
        overall_median=statistics.median(overall),
        warm_best=max(warm),
        warm_median=statistics.median(warm),
        first_best_s=min(firsts),
        first_median_s=statistics.median(firsts),
        submit_first_median_s=statistics.median(s.submit_first_s for s in samples),
        caller_cpu_us=statistics.median(s.caller_cpu_us for s in samples),
        own_cpu_us=statistics.median(s.own_cpu_us for s in samples),
        other_load_max=max(s.other_load for s in samples),
        efficiency_best=max(effs) if effs else None,
        warm_efficiency_best=max(weffs) if weffs else None,
        overall_all=[round(r, 1) for r in overall],
        warm_all=[round(r, 1) for r in warm],
        first_all=[round(f, 4) for f in firsts],
    )


def add_pairs(rows: list[Summary]) -> None:
    base = next((r for r in rows if r.method == BASELINE), None)
    if base is None:
        return
    for r in rows:
        r.paired_overall = paired(r.overall_all, base.overall_all)
        r.paired_warm = paired(r.warm_all, base.warm_all)


def print_block(rows: list[Summary], title: str) -> None:
    """The table for one part at one caller size, fastest overall first."""
    columns: list[Column[Summary]] = [
        Column("method", 20, lambda r: r.method, left=True),
        Column("overall/s", 9, lambda r: f"{r.overall_best:.0f}", "best"),
        Column("median", 8, lambda r: f"{r.overall_median:.0f}"),
        Column("x base", 6, lambda r: fmt_x(r.paired_overall), "paired"),
        Column("warm/s", 8, lambda r: f"{r.warm_best:.0f}", "best"),
        Column("median", 8, lambda r: f"{r.warm_median:.0f}"),
        Column("x base", 6, lambda r: fmt_x(r.paired_warm), "paired"),
        Column("first ms", 8, lambda r: f"{r.first_median_s * 1000:.1f}", "median"),
        Column("submit", 7, lambda r: f"{r.submit_first_median_s * 1000:.1f}", "1st ms"),
        Column("caller", 7, lambda r: f"{r.caller_cpu_us:.0f}", "us/call"),
        Column("own", 7, lambda r: f"{r.own_cpu_us:.0f}", "us/call"),
        Column("other", 6, lambda r: f"{r.other_load_max:.0%}", "load"),
    ]
    if rows[0].part == "cpu":
        columns.append(Column("eff", 5, lambda r: fmt_x(r.efficiency_best)))
        columns.append(Column("warm eff", 8, lambda r: fmt_x(r.warm_efficiency_best)))
    print(title)
    for line in table(columns, sorted(rows, key=lambda r: -r.overall_best)):
        print(line)
    print(
        f"  x base = paired ratio to {BASELINE}; first = from creating the pool, submit = "
        "from the first submit (medians); caller = the caller's CPU per call, own = the "
        "caller's and its reaped descendants' (forkserver's workers not included); other "
        "load = the most busy CPU not ours in any repeat, of all CPUs",
        flush=True,
    )


# -- the children: crash and memory tests ---------------------------------------------------


def child_crash(method: Method, n: int, workers: int) -> int:
    """Print one line per result the method delivers: ``ok X``, ``wrong X`` or
    ``error X TYPE: MESSAGE``; ``delivered S`` when its API returned, ``stopped S``
    once the pool is shut down."""
    lock = threading.Lock()
    t0 = time.perf_counter()

    def emit(x: Any, value: Any, error: BaseException | None) -> None:
        if error is not None:
            text = f"error {x} {type(error).__name__}: {str(error)[:200]!r}"
        else:
            text = f"{'ok' if value == x else 'wrong'} {x}"
        with lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    method.start(workers)
    try:
        method.deliver(crash_on, list(range(n)), emit)
    except Exception as exc:  # the API itself raised: say so, it is the outcome
        emit("-", None, exc)
    print(f"delivered {time.perf_counter() - t0:.3f}", flush=True)
    try:
        method.stop()
    except Exception as exc:
        emit("-", None, exc)
    print(f"stopped {time.perf_counter() - t0:.3f}", flush=True)
    return 0


@dataclass
class CrashRun:
    method: str
    api: str
    n: int
    good: int
    wrong: int
    errors: dict[str, int]
    error_examples: list[str]
    outcome: str
    delivered_s: float | None
    stopped_s: float | None
    seconds: float
    returncode: int | None
    stderr_tail: str


def _src_args() -> list[str]:
    return [] if SOURCE_DIR is None else ["--src", SOURCE_DIR]


def run_crash(name: str, n: int, workers: int, timeout: float) -> CrashRun:
    """The crash test of one method in a fresh process, killed after ``timeout``."""
    argv = [sys.executable, __file__, *_src_args(), "--child", "crash", "--method", name]
    argv += ["--workers", str(workers), "--crash-n", str(n)]
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True) as proc,
    ):
        hung = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            hung = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        lines = out.read().decode(errors="replace").splitlines()
        stderr = err.read().decode(errors="replace")
    good = wrong = 0
    errors: collections.Counter[str] = collections.Counter()
    examples: list[str] = []
    delivered = stopped = None
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "ok":
            good += rest != str(CRASH_AT)
        elif word == "wrong":
            wrong += 1
        elif word == "error":
            kind = rest.split(" ", 1)[1].split(":", 1)[0] if " " in rest else rest
            errors[kind] += 1
            if len(examples) < 3:
                examples.append(rest[:300])
        elif word == "delivered":
            delivered = float(rest)
        elif word == "stopped":
            stopped = float(rest)
    if hung:
        if delivered is None:
            outcome = f"hung: no end after {timeout:.0f} s (killed)"
        else:
            outcome = (
                f"results in {delivered:.1f} s, then shutdown hung (killed at {timeout:.0f} s)"
            )
    elif proc.returncode != 0:
        outcome = f"the caller exited with status {proc.returncode}"
    else:
        outcome = f"returned in {delivered or 0:.1f} s, shut down at {stopped or 0:.1f} s"
    method = METHODS[name]
    return CrashRun(
        method=name,
        api=method.crash_api,
        n=n,
        good=good,
        wrong=wrong,
        errors=dict(errors),
        error_examples=examples,
        outcome=outcome,
        delivered_s=delivered,
        stopped_s=stopped,
        seconds=seconds,
        returncode=proc.returncode,
        stderr_tail=stderr[-1500:],
    )


def child_memory(method: Method, n: int, workers: int) -> int:
    """Stream n calls of ident over a generator; print one JSON line of RSS figures."""
    gc_note = "gc on (default)"
    rss0 = rss_bytes()
    reset_peak()
    progress: list[dict[str, float]] = []
    step = max(1, n // 20)
    runner_peak: int | None = None
    t0 = time.perf_counter()
    method.start(workers)
    expected = 0
    rss_warm = rss0
    for value in method.stream(ident, iter(range(n))):
        if value != expected:
            raise VerificationError(f"{method.name}: value {value!r} for input {expected}")
        expected += 1
        if expected % step == 0 or expected == max(1, n // 100):
            now = rss_bytes()
            if expected == max(1, n // 100):
                rss_warm = now
            progress.append(
                {
                    "done": expected,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "caller_rss_mb": round(now / MIB, 2),
                }
            )
            if (pid := find_runner()) is not None:
                runner_peak = higher_peak(runner_peak, status_kb("VmHWM", pid))
    seconds = time.perf_counter() - t0
    if expected != n:
        raise VerificationError(f"{method.name}: {expected} values for {n} calls")
    rss_end = rss_bytes()
    peak = (status_kb("VmHWM") or 0) * 1024
    method.stop()
    print(
        json.dumps(
            {
                "method": method.name,
                "form": method.streams,
                "n": n,
                "seconds": seconds,
                "rate": n / seconds,
                "rss_before_mb": rss0 / MIB,
                "rss_after_1pct_mb": rss_warm / MIB,
                "rss_end_mb": rss_end / MIB,
                "peak_mb": peak / MIB,
                "growth_mb": (peak - rss0) / MIB,
                "growth_after_1pct_mb": (peak - rss_warm) / MIB,
                "runner_peak_mb": None if runner_peak is None else runner_peak / 1024,
                "gc": gc_note,
                "progress": progress,
            }
        ),
        flush=True,
    )
    return 0


@dataclass
class MemoryRun:
    method: str
    form: str | None
    n: int
    outcome: str
    seconds: float | None = None
    rate: float | None = None
    rss_before_mb: float | None = None
    rss_after_1pct_mb: float | None = None
    """RSS once 1% of the calls were consumed: an eager map has submitted all by then."""
    rss_end_mb: float | None = None
    peak_mb: float | None = None
    growth_mb: float | None = None
    growth_after_1pct_mb: float | None = None
    runner_peak_mb: float | None = None
    gc: str | None = None
    progress: list[dict[str, float]] = field(default_factory=list)
    stderr_tail: str = ""


def run_memory(name: str, n: int, workers: int, timeout: float) -> MemoryRun:
    argv = [sys.executable, __file__, *_src_args(), "--child", "memory", "--method", name]
    argv += ["--workers", str(workers), "--memory-n", str(n)]
    form = METHODS[name].streams
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True) as proc,
    ):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return MemoryRun(name, form, n, f"timed out after {timeout:.0f} s (killed)")
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace").strip().splitlines()
        stderr = err.read().decode(errors="replace")[-1500:]
    if proc.returncode != 0 or not text:
        return MemoryRun(name, form, n, f"failed: status {proc.returncode}", stderr_tail=stderr)
    data = json.loads(text[-1])
    del data["method"], data["form"], data["n"]
    return MemoryRun(name, form, n, "ok", **data, stderr_tail=stderr)


# -- where the time goes ----------------------------------------------------------------------


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds so far of the caller's threads and of every descendant process, by
    role; the descendants' pids are in the keys, so a process that came or went between
    two snapshots is left out of the difference."""
    snap: dict[str, float] = {}
    names = {t.native_id: t.name for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        cpu = stat_cpu_s(f"{task}/stat")
        if cpu is not None:
            tid = int(task.name)
            snap[f"caller thread {names.get(tid, 'other')}|{tid}"] = cpu
    for pid, parent in descendants():
        cpu = stat_cpu_s(f"/proc/{pid}/stat")
        if cpu is not None:
            snap[f"{role_of(pid, parent)}|{pid}"] = cpu
    snap["machine (every process, ours or not)|0"] = machine_busy_s()
    return snap


def cpu_difference(a: dict[str, float], b: dict[str, float], n: int) -> dict[str, float]:
    """µs per call by role, between two snapshots."""
    out: dict[str, float] = collections.defaultdict(float)
    for key, after in b.items():
        if key in a:
            role = key.split("|", 1)[0]
            if role.startswith("caller thread MainThread"):
                role = "caller main thread"
            elif role.startswith("caller thread"):
                role = "caller other threads"
            out[role] += (after - a[key]) / n * 1e6
    return dict(out)


@dataclass
class Breakdown:
    method: str
    n: int
    seconds: float
    rate: float
    us_per_call: dict[str, float]
    other_load: float
    """Other processes' load meanwhile, as a share of all CPUs (``foreign_load``)."""


def cpu_breakdown(name: str, n: int, workers: int) -> Breakdown:
    """Each process's and caller thread's CPU per call over n warm tiny calls."""
    method = METHODS[name]()
    part = Part("tiny", ident, n, 200)
    method.start(workers)
    check(method, part, 0, 1 + part.warm)
    time.sleep(0.05)  # let the helpers settle
    f0, a, t0 = foreign_cpu(), cpu_snapshot(), time.perf_counter()
    check(method, part, 1 + part.warm, 1 + part.warm + n)
    seconds = time.perf_counter() - t0
    b, f1 = cpu_snapshot(), foreign_cpu()
    method.stop()
    cpus = len(os.sched_getaffinity(0))
    load = foreign_load(f0, f1, seconds, cpus)
    return Breakdown(name, n, seconds, n / seconds, cpu_difference(a, b, n), load)


@dataclass
class Hotspot:
    function: str
    share: float
    """Of the profiled thread's samples (py-spy) or time (cProfile)."""
    us_per_call: float | None = None


def _pyspy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if os.access(found, os.X_OK) else None


def _parse_pyspy_raw(path: str, top: int) -> tuple[int, list[Hotspot], list[Hotspot]]:
    """py-spy's raw (collapsed) stacks: the total of samples, the leaf functions and the
    files (modules) by samples."""
    leaves: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            leaf = stack.split(";")[-1]
            func, _, where = leaf.partition(" (")
            file = where.rsplit(":", 1)[0]
            short = "/".join(file.split("/")[-2:])
            leaves[f"{func} ({short})"] += count
            files[short] += count
    share = functools.partial(lambda t, c: c / t if t else 0.0, total)
    return (
        total,
        [Hotspot(k, share(v)) for k, v in leaves.most_common(top)],
        [Hotspot(k, share(v)) for k, v in files.most_common(top)],
    )


def _stop_tool(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _parse_strace(path: str, n: int) -> dict[str, float]:
    """``strace -c``'s table: calls per leanpool call, by syscall."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0].replace(".", "").isdigit() and parts[3].isdigit():
                out[parts[-1]] = int(parts[3]) / n
            elif len(parts) >= 4 and parts[-1] == "total" and parts[2].isdigit():
                out["total"] = int(parts[2]) / n
    return out


@dataclass
class Profile:
    breakdowns: list[Breakdown]
    submit_loop_us: float
    """Wall µs per Executor.submit in a loop of n submits, no profiler."""
    submit_loop_cpu_us: float
    """The main thread's CPU µs per Executor.submit in that loop."""
    cprofile_submit: list[Hotspot]
    cprofile_total_us: float
    tools: dict[str, dict[str, Any]]
    """By tool (py-spy, strace, perf), then by process (caller, runner, worker)."""
    notes: list[str]


def profile(methods: list[str], n: int, workers: int) -> Profile:
    import cProfile
    import pstats

    from leanpool import Executor

    notes: list[str] = []
    breakdowns = []
    for name in methods:
        if name == "leanpool-taskrunner":
            continue  # each of its runs starts and ends its runner: nothing to sample
        bd = cpu_breakdown(name, n, workers)
        breakdowns.append(bd)
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(bd.us_per_call.items()) if v >= 0.5)
        print(
            f"  {name:<20} {bd.rate:7.0f} calls/s; CPU us/call: {parts}; other load "
            f"{bd.other_load:.0%}",
            flush=True,
        )

    # The caller's submit loop alone, then under cProfile.
    with Executor(max_workers=workers) as ex:
        list(ex.map(ident, range(200)))
        t0, c0 = time.perf_counter(), time.thread_time()
        futures = [ex.submit(ident, i) for i in range(n)]
        submit_us = (time.perf_counter() - t0) / n * 1e6
        submit_cpu_us = (time.thread_time() - c0) / n * 1e6
        if [f.result() for f in futures] != list(range(n)):
            raise VerificationError("profile: wrong values")
    print(
        f"  Executor.submit loop of {n}: {submit_us:.1f} us of wall time, {submit_cpu_us:.1f} "
        "us of the main thread's CPU per submit (no profiler)",
        flush=True,
    )
    prof = cProfile.Profile()
    with Executor(max_workers=workers) as ex:
        list(ex.map(ident, range(200)))
        prof.enable()
        futures = [ex.submit(ident, i) for i in range(n)]
        prof.disable()
        for f in futures:
            f.result()
    stats = pstats.Stats(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # pstats keeps it untyped
    total_tt = sum(v[2] for v in raw.values())
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:14]
    hot = [
        Hotspot(
            f"{func[2]} ({'/'.join(func[0].split('/')[-2:])}:{func[1]})",
            v[2] / total_tt,
            v[2] / n * 1e6,
        )
        for func, v in rows
    ]
    print(f"  cProfile of {n} submits: {total_tt / n * 1e6:.1f} us/submit under the profiler")
    for h in hot[:8]:
        print(f"    {h.share:6.1%} {h.us_per_call or 0:6.2f} us  {h.function}")

    tools = trace_leanpool(n, workers, notes)
    return Profile(
        breakdowns=breakdowns,
        submit_loop_us=submit_us,
        submit_loop_cpu_us=submit_cpu_us,
        cprofile_submit=hot,
        cprofile_total_us=total_tt / n * 1e6,
        tools=tools,
        notes=notes,
    )


TOOLS: Final = ("py-spy", "strace", "perf")


def _tool_command(tool: str, path: str, pid: int, out: str) -> list[str]:
    if tool == "py-spy":
        sampling = ["--rate", "500", "--format", "raw", "--nonblocking"]
        return [path, "record", "--pid", str(pid), *sampling, "--output", out]
    if tool == "strace":
        # Every thread by its id, not -f: -f would also follow the processes the caller
        # starts meanwhile (the other tracers).
        tids = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
        return [path, "-c", "-o", out, *(arg for tid in tids for arg in ("-p", tid))]
    return [path, "record", "-e", "cpu-clock", "-F", "2000", "-p", str(pid), "-o", out, "-q"]


def _parse_perf(path: str, data: str, top: int) -> dict[str, Any]:
    """``perf report``'s shares of the samples by shared object and by symbol."""
    out: dict[str, Any] = {}
    for key, sort in (("by_object", "dso"), ("by_symbol", "dso,sym")):
        done = subprocess.run(
            [path, "report", "-i", data, "--no-children", "--sort", sort, "--stdio", "-g", "none"],
            capture_output=True,
            text=True,
            check=False,
        )
        rows: list[tuple[str, float]] = []
        for line in done.stdout.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0].endswith("%") and not line.startswith("#"):
                with contextlib.suppress(ValueError):
                    rows.append((" ".join(parts[1].split()), float(parts[0][:-1]) / 100))
        out[key] = rows[:top]
    return out


def trace_leanpool(n: int, workers: int, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Each available tool attached to the caller, the runner and one worker while n
    warm ``Executor.submit`` calls of ident run; one run per tool."""
    from leanpool import Executor

    found = {
        "py-spy": _pyspy(),
        "strace": shutil.which("strace"),
        "perf": shutil.which("perf"),
    }
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tool in TOOLS:
            path = found[tool]
            if path is None:
                notes.append(f"{tool} not installed: left out")
                continue
            with Executor(max_workers=workers) as ex:
                list(ex.map(ident, range(200)))
                runner = find_runner()
                pool = [p for p in children_of(runner or 0) if b"_worker" in cmdline(p)]
                if runner is None or not pool:
                    notes.append(f"{tool}: the runner or its workers were not found")
                    continue
                # The caller last, so that its tool does not see the other tools start.
                targets = {"runner": runner, "worker": pool[0], "caller": os.getpid()}
                procs = {
                    role: subprocess.Popen(
                        _tool_command(tool, path, pid, os.path.join(tmp, f"{tool}-{role}")),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for role, pid in targets.items()
                }
                time.sleep(1.5)  # let them attach
                t0 = time.perf_counter()
                futures = [ex.submit(ident, i) for i in range(n)]
                if [f.result() for f in futures] != list(range(n)):
                    raise VerificationError("profile: wrong values")
                seconds = time.perf_counter() - t0
                for proc in procs.values():
                    _stop_tool(proc)
            per_role: dict[str, Any] = {"calls_per_s_while_attached": n / seconds}
            print(f"  {tool} ({n / seconds:.0f} calls/s while attached):")
            for role in targets:
                out = os.path.join(tmp, f"{tool}-{role}")
                if tool == "py-spy":
                    total, leaves, files = _parse_pyspy_raw(out, 15)
                    per_role[role] = {
                        "samples": total,
                        "leaves": [asdict(h) for h in leaves],
                        "files": [asdict(h) for h in files],
                    }
                    tops = ", ".join(f"{h.function} {h.share:.0%}" for h in leaves[:6])
                    print(f"    {role}: {total} samples at 500/s; leaves: {tops}")
                elif tool == "strace":
                    calls = _parse_strace(out, n)
                    per_role[role] = calls
                    counts = sorted(
                        ((k, v) for k, v in calls.items() if k != "total"), key=lambda kv: -kv[1]
                    )
                    print(
                        f"    {role}: {calls.get('total', 0):.2f} syscalls per call: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in counts[:8])
                    )
                else:
                    report = _parse_perf(path, out, 12)
                    per_role[role] = report
                    objs = ", ".join(f"{k} {v:.0%}" for k, v in report["by_object"][:4])
                    syms = ", ".join(f"{k} {v:.0%}" for k, v in report["by_symbol"][:5])
                    print(f"    {role}: by object {objs}\n      top symbols {syms}")
            results[tool] = per_role
    return results


# -- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    status: str
    detail: str


def evaluate_targets(
    summaries: list[Summary], memory: list[MemoryRun], crashes: list[CrashRun], sizes: list[int]
) -> list[Target]:
    table = {(s.part, s.memory_mb, s.method): s for s in summaries}
    out: list[Target] = []
    lo, hi = (min(sizes), max(sizes)) if sizes else (0, 0)

    # 1. leanpool flat within 5% from the smallest to the biggest caller.
    if hi > lo:
        for part in ("tiny", "cpu"):
            for name in LEANPOOL:
                a, b = table.get((part, lo, name)), table.get((part, hi, name))
                if a is None or b is None:
                    continue
                best = b.overall_best / a.overall_best
                med = b.overall_median / a.overall_median
                warm = b.warm_best / a.warm_best
                detail = (
                    f"overall {b.overall_best:.0f} / {a.overall_best:.0f} = {best:.3f} (medians "
                    f"{med:.3f}); warm {b.warm_best:.0f} / {a.warm_best:.0f} = {warm:.3f}"
                )
                ref_a, ref_b = (
                    table.get((part, lo, "ppe-spawn")),
                    table.get((part, hi, "ppe-spawn")),
                )
                if ref_a and ref_b:
                    pa = paired(a.overall_all, ref_a.overall_all)
                    pb = paired(b.overall_all, ref_b.overall_all)
                    if pa and pb:
                        detail += (
                            f"; as paired ratios to ppe-spawn {pb:.2f} / {pa:.2f} = {pb / pa:.3f}"
                        )
                ok = 0.95 <= best <= 1.05
                out.append(
                    Target(
                        f"{part}: {name} at {hi} MB within 5% of {lo} MB (best, overall)",
                        "MET" if ok else "NOT MET",
                        detail,
                    )
                )

    # 2. tiny throughput >= 1.0 x ProcessPoolExecutor submit() at the smallest caller.
    for name in LEANPOOL:
        lean = table.get(("tiny", lo, name))
        if lean is None:
            continue
        for den in ("ppe-fork", "ppe-forkserver", "ppe-spawn"):
            other = table.get(("tiny", lo, den))
            if other is None:
                continue
            r = lean.overall_best / other.overall_best
            pr = paired(lean.overall_all, other.overall_all)
            rw = lean.warm_best / other.warm_best
            pw = paired(lean.warm_all, other.warm_all)
            detail = (
                f"overall {lean.overall_best:.0f} / {other.overall_best:.0f} = {r:.2f} (paired "
                f"{fmt_x(pr)}); warm {lean.warm_best:.0f} / {other.warm_best:.0f} = {rw:.2f} "
                f"(paired {fmt_x(pw)})"
            )
            default = " (the default context on Linux before 3.14)" if den == "ppe-fork" else ""
            out.append(
                Target(
                    f"tiny at {lo} MB: {name} >= 1.0 x {den} submit(){default}",
                    "MET" if r >= 1.0 else "NOT MET",
                    detail,
                )
            )

    # 3. ahead of every fork-based pool at the biggest caller.
    forks = [m for m, cls in METHODS.items() if cls.forks_caller]
    for name in LEANPOOL:
        lean = table.get(("tiny", hi, name))
        if lean is None or hi == lo:
            continue
        parts, ok = [], True
        for den in forks:
            other = table.get(("tiny", hi, den))
            if other is None:
                continue
            r = lean.overall_best / other.overall_best
            pr = paired(lean.overall_all, other.overall_all)
            ok = ok and r > 1.0
            parts.append(f"{den} {r:.2f} (paired {fmt_x(pr)})")
        out.append(
            Target(
                f"tiny at {hi} MB: {name} ahead of every fork-based pool (overall, best)",
                "MET" if ok and parts else "NOT MET",
                ", ".join(parts),
            )
        )

    # 4. caller growth at 1M streamed tasks.
    for run in memory:
        if run.method != "leanpool-map":
            continue
        if run.growth_mb is None:
            out.append(Target("caller RSS growth <= 30 MB at 1M tasks", "NOT MET", run.outcome))
            continue
        note = "" if run.n >= 1_000_000 else f" (only {run.n:,} tasks)"
        out.append(
            Target(
                f"caller RSS growth <= 30 MB streaming {run.n:,} calls{note} (Executor.map)",
                "MET" if run.growth_mb <= 30 and run.n >= 1_000_000 else "NOT MET",
                f"peak {run.peak_mb:.1f} MB - before {run.rss_before_mb:.1f} MB = "
                f"{run.growth_mb:.1f} MB ({run.growth_after_1pct_mb:.1f} MB after the first 1%)",
            )
        )

    # 5. 999 of 1,000 with one crashing task.
    for crash in crashes:
        if crash.method not in ("leanpool-submit", "leanpool-taskrunner"):
            continue  # map stops at the first exception, by its contract
        good_all = crash.good == crash.n - 1
        out.append(
            Target(
                f"{crash.method}: {crash.n - 1} of {crash.n} results with one segfault",
                "MET" if good_all else "NOT MET",
                f"{crash.good} good, errors {crash.errors}; {crash.outcome}",
            )
        )
    return out


# -- the record ----------------------------------------------------------------------------


def machine_info(available: dict[str, str | None]) -> dict[str, Any]:
    """What the numbers depend on, with the versions of the pools' packages; imports
    leanpool."""
    return {
        "date": now_text(),
        "uname": run_text("uname", "-a"),
        "nproc": run_text("nproc"),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory": memory_total(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        **measured_leanpool(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "checkout_src_dirty": src_dirty(),
        "packages": available,
        "argv": sys.argv,
    }


# -- main ----------------------------------------------------------------------------------


PARTS: Final = ("crash", "memory", "profile", "throughput")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Compare ways to run Python calls in other processes.")
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of " + ",".join(PARTS))
    p.add_argument("--methods", help="comma list of " + ",".join(METHODS) + " (default all)")
    p.add_argument("--sizes", default="0,2000,8000", help="caller heap sizes in MiB (0,2000,8000)")
    p.add_argument("-r", "--repeats", type=int, default=5, help="interleaved repeats (5)")
    p.add_argument("--workers", type=int, default=2, help="workers per pool (2)")
    p.add_argument("--tiny-n", type=int, default=3000, help="timed tiny calls per run (3000)")
    p.add_argument("--tiny-warm", type=int, default=200, help="tiny warm-up calls (200)")
    p.add_argument("--cpu-n", type=int, default=200, help="timed busy calls per run (200)")
    p.add_argument("--cpu-warm", type=int, default=4, help="busy warm-up calls (4)")
    p.add_argument("--busy-ms", type=float, default=10.0, help="CPU ms per busy call (10)")
    p.add_argument(
        "--memory-n", type=int, default=1_000_000, help="leanpool's streamed calls (1,000,000)"
    )
    p.add_argument(
        "--memory-n-others",
        type=int,
        default=100_000,
        help="the other methods' streamed calls (100,000)",
    )
    p.add_argument("--memory-timeout", type=float, default=900, help="seconds per method (900)")
    p.add_argument("--crash-n", type=int, default=1000, help="calls in the crash test (1000)")
    p.add_argument("--crash-timeout", type=float, default=60, help="seconds per method (60)")
    p.add_argument("--profile-n", type=int, default=20_000, help="calls per profile run (20,000)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a smoke test: sizes 0,300, 2 repeats, 500 tiny and 40 busy "
        "calls, 20,000 streamed calls, crash timeout 20 s, profile 3,000 calls",
    )
    p.add_argument("--json", help="save the record here")
    p.add_argument(
        "--src",
        help="import leanpool (and so start its runner and workers) from this src directory, "
        "e.g. an unpacked 'git archive COMMIT src', instead of the installed one",
    )
    p.add_argument("--child", choices=("crash", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.tiny_n, args.cpu_n = "0,300", 2, 500, 40
        args.memory_n = args.memory_n_others = 20_000
        args.crash_timeout, args.profile_n = 20, 3000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        method = METHODS[args.method]()
        if args.child == "crash":
            return child_crash(method, args.crash_n, args.workers)
        return child_memory(method, args.memory_n, args.workers)

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    wanted = [m.strip() for m in (args.methods or ",".join(METHODS)).split(",") if m.strip()]
    for item, known in [(p, PARTS) for p in parts] + [(m, tuple(METHODS)) for m in wanted]:
        if item not in known:
            print(f"unknown {item!r}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
    notes: list[str] = []
    versions: dict[str, str | None] = {}
    methods: list[str] = []
    for name in wanted:
        cls = METHODS[name]
        try:
            version = package_version(cls)
        except Exception as exc:  # ImportError, or a package broken some other way
            notes.append(f"{name}: skipped, {cls.package} does not import ({exc!r})")
            continue
        if cls.package is not None:
            versions[cls.package] = version
        methods.append(name)
    for note in notes:
        print("note:", note)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    cpus = len(os.sched_getaffinity(0))
    meta = machine_info(versions)
    print(
        f"{meta['date']}  {meta['uname']}\n{meta['nproc']} CPUs, {meta['memory']}, Python "
        f"{meta['python']}, leanpool sha256 {meta['leanpool_sha256'][:12]} (git HEAD "
        f"{meta['commit']}, src/ {'dirty' if meta['checkout_src_dirty'] else 'clean'}); "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        flush=True,
    )
    record: dict[str, Any] = {"meta": meta, "args": vars(args), "notes": notes}
    record["methods"] = {name: METHODS[name].what for name in methods}

    def save() -> None:
        if args.json:
            save_json(args.json, record)

    crashes: list[CrashRun] = []
    memory: list[MemoryRun] = []
    samples: list[Sample] = []
    summaries: list[Summary] = []

    if "crash" in parts:
        print(
            f"\n== crash: {args.crash_n} calls of crash_on, a segfault for input {CRASH_AT}, "
            f"{args.workers} workers, each method in a fresh process killed after "
            f"{args.crash_timeout:.0f} s",
            flush=True,
        )
        for name in methods:
            crash = run_crash(name, args.crash_n, args.workers, args.crash_timeout)
            crashes.append(crash)
            print(
                f"  {name:<20} {crash.good:>4} of {crash.n - 1} good; "
                f"errors {crash.errors or '-'}; {crash.outcome}",
                flush=True,
            )
        record["crash"] = [asdict(c) for c in crashes]
        save()

    if "memory" in parts:
        print(
            f"\n== memory: ident over a generator, consumed as it streams, caller at 0 MB, "
            f"{args.workers} workers; leanpool {args.memory_n:,} calls, the others "
            f"{args.memory_n_others:,}",
            flush=True,
        )
        for name in methods:
            if METHODS[name].streams is None:
                continue
            n = args.memory_n if name.startswith("leanpool") else args.memory_n_others
            run = run_memory(name, n, args.workers, args.memory_timeout)
            memory.append(run)
            if run.growth_mb is None:
                print(f"  {name:<20} {n:>9,}  {run.outcome}", flush=True)
            else:
                print(
                    f"  {name:<20} {n:>9,}  {run.rate or 0:7.0f} calls/s  RSS "
                    f"{run.rss_before_mb:.1f} MB before, peak {run.peak_mb:.1f} MB: growth "
                    f"{run.growth_mb:.1f} MB ({run.growth_after_1pct_mb:.1f} MB after the "
                    f"first 1%)"
                    + (
                        ""
                        if run.runner_peak_mb is None
                        else f"; runner {run.runner_peak_mb:.1f} MB"
                    ),
                    flush=True,
                )
        record["memory"] = [asdict(m) for m in memory]
        save()

    if "profile" in parts:
        print(
            f"\n== profile: {args.profile_n:,} warm tiny calls per method, {args.workers} "
            "workers, caller at 0 MB; CPU per call from /proc",
            flush=True,
        )
        prof = profile(methods, args.profile_n, args.workers)
        record["profile"] = asdict(prof)
        save()

    if "throughput" in parts:
        part_list = [
            Part("tiny", ident, args.tiny_n, args.tiny_warm),
            Part("cpu", busy, args.cpu_n, args.cpu_warm, args.busy_ms / 1000),
        ]
        heap = Heap()
        for mb in sizes:
            took = heap.grow_to(mb)
            print(
                f"\ncaller heap grown to {rss_bytes() / MIB:.0f} MB RSS for {mb} MiB "
                f"({heap.items:,} items, {took:.1f} s)",
                flush=True,
            )
            by: dict[tuple[str, str], list[Sample]] = collections.defaultdict(list)
            failed: set[tuple[str, str]] = set()
            for rep in range(args.repeats):
                for part in part_list:
                    for name in rotated(methods, rep):
                        if (part.name, name) in failed:
                            continue
                        method = METHODS[name]()
                        try:
                            sample = measure(method, part, mb, rep, args.workers, cpus)
                        except Exception as exc:  # reported, and the method left out
                            failed.add((part.name, name))
                            note = f"{name} failed on {part.name} at {mb} MiB: {exc!r}"
                            notes.append(note)
                            print("  " + note, flush=True)
                            with contextlib.suppress(Exception):
                                method.stop()
                            continue
                        samples.append(sample)
                        by[(part.name, name)].append(sample)
                print(f"  repeat {rep + 1}/{args.repeats} done", flush=True)
            for part in part_list:
                rows = [
                    summarize(by[(part.name, name)])
                    for name in methods
                    if by[(part.name, name)] and (part.name, name) not in failed
                ]
                if not rows:
                    continue
                add_pairs(rows)
                summaries.extend(rows)
                what = (
                    f"ident, {part.n} timed calls after {part.warm} warm-up"
                    if part.busy_s is None
                    else f"busy {args.busy_ms:g} ms CPU, {part.n} timed calls after {part.warm}"
                )
                rss = max(s.caller_rss_mb for s in samples if s.memory_mb == mb)
                print_block(
                    rows,
                    f"== {part.name} at {mb} MiB (caller RSS {rss:.0f} MB): {what}, "
                    f"{args.workers} workers, {args.repeats} repeats",
                )
            record["samples"] = [asdict(s) for s in samples]
            record["summary"] = [asdict(s) for s in summaries]
            save()

    meta["date_end"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    targets = evaluate_targets(summaries, memory, crashes, sizes)
    record["targets"] = [asdict(t) for t in targets]
    note_source_at_end(meta)
    save()
    if targets:
        print("\nTargets:")
        for t in targets:
            print(f"  {t.status:<7}  {t.name}: {t.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""leanpool on a Dask cluster, against leanpool on this machine and against plain Dask.

Run from a checkout, with dask distributed installed::

    python benchmarks/cluster_bench.py --out benchmarks/results/cluster-DATE

It starts a Dask cluster of separate processes on 127.0.0.1 (one scheduler, two
``dask worker`` processes of ``--nthreads 1``), so that each one's CPU and memory can be
read apart, and tears it down at the end, on error too.  After a small unmeasured
warm-up run of each method:

0. Start-up.  One task, 3 times per method: the fixed cost of a run (importing dask,
   connecting to the scheduler, the first batch), for the CPU per task beyond it.

1. Speed.  The workloads of ``bench.py``, ``echo i`` and ``sleep 0.00X && echo i``
   (X from 1 to 10 ms, seeded), run ``-r`` times by each method in turn (A B C A B C,
   so that each repeat is a pair):

   - ``local``: ``leanpool run FILE -j P`` (P = 8 for echo, 16 for sleep);
   - ``cluster``: ``leanpool run FILE --cluster tcp://... -j P/2`` (two worker threads,
     each running one batch of P/2 at once: the same P at once in all);
   - ``plain-dask``: a Python client (this script's ``--plain-dask-driver``) doing one
     ``client.submit(subprocess.run, ["/bin/sh", "-c", cmd], ...)`` per task, then
     ``as_completed(..., with_results=True)``; it runs 2 at once (one per worker
     thread).

   Once more, plain Dask on a second cluster whose workers have ``--nthreads 4``: is it
   bound by its threads or by the scheduler's work per task?

2. Memory.  ``true`` tasks, 10,000 and 100,000 (``--memory-sizes``), on the cluster
   with ``-j 8``: the peak RSS (VmHWM) of the cluster driver, the scheduler (its peak
   reset before each run through ``/proc/PID/clear_refs``) and the CLI; 1,000,000 too
   (``--memory-big``) when the largest of those took under ``--memory-big-if`` seconds
   and the benchmark would still end within ``--budget-s`` (25 minutes).

Before each measured run it waits (up to ``--quiet-wait`` seconds) until other programs
use under 0.15 cores, and it records the CPU other programs used during each run.

Every run's output is checked whole: one result line per task, each id once, status 0,
its task's exact stdout, empty stderr, and the set of stdouts equal to the expected set.
A run that fails this is reported as failed and left out of every statistic.

What is measured, per run: wall seconds from starting the command to its exit (imports,
the connection to the scheduler and the cluster driver's start included), the time to
its first result byte, CPU seconds (from ``/proc/PID/stat``, 10 ms ticks) of the
command itself, of its waited-for children (the cluster driver, read from the
command's zombie before it is reaped; for a local run: the lean runner and its tasks),
of the scheduler and of the workers (each worker's whole process tree), and the
machine's busy CPU (``/proc/stat``).  A scheduler plugin counts the Dask tasks that
reached memory and, for leanpool's batches, their compute times on the workers.

``--report OUT`` prints a saved run's report again from OUT.json, with this version's
summary.  The leanpool measured is ``git archive COMMIT src`` (``--commit``, default HEAD),
unpacked into a scratch directory and put first on PYTHONPATH for the CLI, the
driver and the workers: edits to the checkout during the run do not change it.  The
measuring kit (/proc probes, statistics, the record, tables) is ``harness.py``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from harness import (  # benchmarks/harness.py, beside this file
    HERE,
    Column,
    Poller,
    find_child,
    fmt,
    fmt_mb,
    fmt_us,
    git,
    higher_peak,
    machine_basics,
    machine_busy_s,
    median_or_none,
    proc_cpu,
    reset_peak,
    save_json,
    spread,
    src_dirty,
    status_kb,
    table,
    terminated_on_sigterm,
    tree_cpu,
    unpack_source,
    wait_quiet,
    wait_unreaped,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

DRIVER_MARK: Final = b"leanpool._cluster.driver"
PLUGIN_NAME: Final = "cluster-bench-counter"
SAMPLE_S: Final = 0.05
"""How often a running command's driver and the scheduler are sampled."""
RUN_TIMEOUT_S: Final = 1200.0
"""A run still going after this long is killed and reported as failed."""

QUIET_CORES: Final = 0.15
"""Before each measured run, wait until other programs use under this many cores ..."""
QUIET_WAIT_S: Final = 20.0
"""... but no longer than this (``--quiet-wait``; the run's ``others_cpu_s`` says what it
competed with)."""
TIMELINE_S: Final = 1.0
"""How often the driver's and the scheduler's RSS go into a run's timeline."""

METHODS: Final = ("local", "cluster", "plain-dask")
PHASES: Final = ("startup", "speed", "threads4", "memory")
QUIET_WAIT: Final = [QUIET_WAIT_S]
"""The longest wait for a quiet machine before a run, as ``--quiet-wait`` set it."""
WORKERS: Final = 2


def distributed() -> Any:
    """dask distributed, untyped (its Client's methods are): imported when first used."""
    return importlib.import_module("distributed")


# -- the scheduler plugin ----------------------------------------------------------------


def make_plugin() -> Any:
    """A scheduler plugin that counts the keys reaching memory: leanpool's batches (with
    their compute seconds on the worker) apart from other tasks."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Counter(SchedulerPlugin):
        name = PLUGIN_NAME

        def __init__(self) -> None:
            self.batches = 0
            self.tasks = 0
            self.compute: list[float] = []

        def transition(
            self, key: object, start: str, finish: str, *args: object, **kwargs: Any
        ) -> None:
            if finish != "memory":
                return
            if isinstance(key, str) and key.startswith("leanpool-batch-"):
                self.batches += 1
                for span in kwargs.get("startstops") or ():
                    if span.get("action") == "compute":
                        self.compute.append(float(span["stop"]) - float(span["start"]))
            else:
                self.tasks += 1

    return Counter()


def take_counts(dask_scheduler: Any) -> dict[str, Any]:
    """Run on the scheduler: the plugin's counts since the last take, then reset them."""
    plugin = dask_scheduler.plugins[PLUGIN_NAME]
    out = {"batches": plugin.batches, "tasks": plugin.tasks, "compute": plugin.compute}
    plugin.batches, plugin.tasks, plugin.compute = 0, 0, []
    return out


def which_leanpool() -> str:
    """Run on a worker: the file its leanpool cluster code comes from."""
    import leanpool._cluster.batch as batch

    return str(batch.__file__)


# -- the cluster ---------------------------------------------------------------------------


class ClusterGone(Exception):
    """A process of the benchmark's cluster exited: nothing more can be measured on it."""


class Cluster:
    """A scheduler and two ``dask worker`` processes on 127.0.0.1, each in its own
    process group (killed whole at the end)."""

    def __init__(self, scratch: Path, nthreads: int, env: dict[str, str], tag: str) -> None:
        self.scratch = scratch
        self.nthreads = nthreads
        self.env = env
        self.tag = tag
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.address = ""
        self.scheduler_pid = 0
        self.worker_pids: list[int] = []
        self.leanpool_on_workers: list[str] = []

    def _start(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.scratch / log, "wb")  # noqa: SIM115 (closed in stop)
        self.logs.append(out)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.scratch,
            env=self.env,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        sfile = self.scratch / f"scheduler-{self.tag}.json"
        scheduler = self._start(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sfile),
            ],
            f"scheduler-{self.tag}.log",
        )
        self.scheduler_pid = scheduler.pid
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.address = json.loads(sfile.read_text())["address"]
                break
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start: see {self.scratch}")
            time.sleep(0.1)
        for i in range(WORKERS):
            worker = self._start(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    self.address,
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    str(self.nthreads),
                    "--nworkers",
                    "1",
                    "--no-dashboard",
                    "--name",
                    f"w{i}-{self.tag}",
                    "--local-directory",
                    str(self.scratch / f"w{i}-{self.tag}"),
                ],
                f"worker{i}-{self.tag}.log",
            )
            self.worker_pids.append(worker.pid)
        Client = distributed().Client
        client = Client(self.address, timeout=60, set_as_default=False)
        try:
            client.wait_for_workers(WORKERS, timeout=120)
            threads = client.nthreads()
            if len(threads) != WORKERS or sum(threads.values()) != WORKERS * self.nthreads:
                raise RuntimeError(f"unexpected workers: {threads}")
            client.register_plugin(make_plugin(), name=PLUGIN_NAME)
            found = client.run(which_leanpool)
            self.leanpool_on_workers = sorted(set(found.values()))
        finally:
            client.close()

    def counts(self) -> dict[str, Any] | None:
        """The plugin's counts since the last call (None if the scheduler cannot say)."""
        Client = distributed().Client
        try:
            client = Client(self.address, timeout=30, set_as_default=False)
        except Exception:
            return None
        try:
            result: dict[str, Any] = client.run_on_scheduler(take_counts)
            return result
        except Exception:
            return None
        finally:
            client.close()

    def problem(self) -> str | None:
        """Why the cluster is not whole any more (one of its processes exited), if so."""
        names = ["the scheduler", *(f"worker {i}" for i in range(WORKERS))]
        for name, proc in zip(names, self.procs, strict=False):
            if proc.poll() is not None:
                return f"{name} of the cluster exited (status {proc.returncode}) during the run"
        return None

    def workers_cpu(self) -> float:
        return sum(tree_cpu(pid) for pid in self.worker_pids)

    def stop(self) -> None:
        # Workers first, so that the scheduler does not see them leave one by one.
        for proc in reversed(self.procs):
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for log in self.logs:
            log.close()
        self.procs.clear()
        self.logs.clear()


# -- workloads and checks ------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    n: int
    parallel: int
    """Tasks at once in all, on this machine or on the cluster."""
    path: Path

    def expected(self, index: int) -> str:
        return "" if self.name == "true" else f"{index}\n"


def write_workload(name: str, n: int, parallel: int, scratch: Path, seed: int) -> Workload:
    """The task file: ``{"id": i, "cmd": ...}`` per line, ids 0 to n-1."""
    path = scratch / f"{name}-{n}.jsonl"
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            if name == "echo":
                cmd = f"echo {i}"
            elif name == "sleep":
                cmd = f"sleep 0.{rng.randint(1, 10):03d} && echo {i}"
            else:
                cmd = "true"
            f.write(json.dumps({"id": i, "cmd": cmd}) + "\n")
    return Workload(name, n, parallel, path)


def check_output(path: Path, workload: Workload) -> list[str]:
    """What is wrong with a run's output (nothing: an empty list).  Every line must be a
    result of a distinct task of the file, with status 0, its exact stdout and no
    stderr; every task must have one; and the set of stdouts must be the expected one."""
    problems: dict[str, int] = {}
    examples: list[str] = []
    seen = bytearray(workload.n)
    lines = 0
    stdouts: set[str] = set()

    def bad(what: str, line: bytes) -> None:
        problems[what] = problems.get(what, 0) + 1
        if len(examples) < 5:
            examples.append(f"{what}: {line[:200]!r}")

    with open(path, "rb") as f:
        for line in f:
            lines += 1
            try:
                record = json.loads(line)
                task_id = record["id"]
                status, stdout, stderr = record["status"], record["stdout"], record["stderr"]
            except (ValueError, KeyError, TypeError):
                bad("not a result line", line)
                continue
            if type(task_id) is not int or not 0 <= task_id < workload.n:
                bad("id of no task", line)
                continue
            if seen[task_id]:
                bad("second result for an id", line)
                continue
            seen[task_id] = 1
            if isinstance(stdout, str):
                stdouts.add(stdout)
            if status != 0 or record.get("ok", True) is not True:
                bad("status not 0", line)
            elif stdout != workload.expected(task_id):
                bad("stdout not its task's", line)
            elif stderr:
                bad("output on stderr", line)
    out = [f"{k} line(s) with {what}" for what, k in problems.items()]
    if lines != workload.n:
        out.append(f"{lines} result lines for {workload.n} tasks")
    missing = seen.count(0)
    if missing:
        out.append(f"{missing} tasks without a result (first: id {seen.find(0)})")
    if stdouts != {workload.expected(i) for i in range(workload.n)}:
        out.append("the set of stdouts is not the expected set")
    return out + examples


# -- one run -------------------------------------------------------------------------------


@dataclass
class Run:
    """One command's run, measured and checked."""

    phase: str
    workload: str
    method: str
    rep: int
    n: int
    parallel_per_batch: int
    threads_per_worker: int
    argv: list[str]
    wall_s: float = 0.0
    tps: float = 0.0
    first_result_s: float | None = None
    returncode: int | None = None
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    cmd_cpu_s: float = 0.0
    """The command's own CPU: the leanpool CLI, or the plain Dask client."""
    cmd_children_cpu_s: float = 0.0
    """Its waited-for descendants': the cluster driver; for a local run the lean runner
    and its tasks."""
    driver_cpu_s: float | None = None
    """The process that talks to the scheduler: the cluster driver, or the plain client."""
    driver_cpu_sampled_s: float | None = None
    """The cluster driver's own CPU as last sampled while it ran (a cross-check)."""
    scheduler_cpu_s: float = 0.0
    workers_cpu_s: float = 0.0
    machine_busy_s: float = 0.0
    bench_cpu_s: float = 0.0
    """This script's own CPU meanwhile (copying the output, sampling): measurement."""
    others_before: float | None = None
    """Cores other programs used in the second before the run (see ``wait_quiet``)."""
    others_cpu_s: float = 0.0
    """CPU seconds the machine spent meanwhile on programs not of this benchmark."""
    driver_peak_kb: int | None = None
    scheduler_rss_before_kb: int | None = None
    scheduler_peak_kb: int | None = None
    cmd_peak_kb: int | None = None
    batches: int | None = None
    dask_tasks: int | None = None
    batch_compute_s: list[float] = field(default_factory=list)
    timeline: list[list[float]] = field(default_factory=list)
    """[seconds since the start, driver VmRSS KiB, scheduler VmRSS KiB] every
    ``TIMELINE_S`` (0 when not known)."""
    stderr_tail: str = ""

    def per_task_us(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds / self.n * 1e6


class Watch(Poller):
    """Samples, every ``SAMPLE_S`` while a command runs: its cluster driver's VmHWM and
    CPU, the scheduler's VmHWM and the command's own VmHWM (all kernel peaks, so a
    sample misses only what comes after the last one)."""

    def __init__(self, cmd_pid: int, scheduler_pid: int | None, cluster: Cluster) -> None:
        super().__init__(SAMPLE_S, "watch")
        self.cmd_pid = cmd_pid
        self.cluster = cluster
        self.problem: str | None = None
        """Set when the cluster lost a process: the command was killed."""
        self.scheduler_pid = scheduler_pid
        self.driver_pid: int | None = None
        self.driver_peak_kb: int | None = None
        self.driver_cpu_s: float | None = None
        self.scheduler_peak_kb: int | None = None
        self.cmd_peak_kb: int | None = None
        self.timeline: list[list[float]] = []
        self._began = time.monotonic()
        self._next_point = self._began
        self.start()

    def sample(self) -> None:
        if self.problem is None:
            self.problem = self.cluster.problem()
            if self.problem is not None:
                with contextlib.suppress(OSError):
                    os.killpg(self.cmd_pid, signal.SIGKILL)
        if self.driver_pid is None:
            self.driver_pid = find_child(self.cmd_pid, DRIVER_MARK)
        if self.driver_pid is not None:
            self.driver_peak_kb = higher_peak(
                self.driver_peak_kb, status_kb("VmHWM", self.driver_pid)
            )
            cpu = proc_cpu(self.driver_pid)
            if cpu is not None:
                self.driver_cpu_s = cpu[0]
        if self.scheduler_pid is not None:
            self.scheduler_peak_kb = higher_peak(
                self.scheduler_peak_kb, status_kb("VmHWM", self.scheduler_pid)
            )
        self.cmd_peak_kb = higher_peak(self.cmd_peak_kb, status_kb("VmHWM", self.cmd_pid))
        now = time.monotonic()
        if now >= self._next_point:
            self._next_point = now + TIMELINE_S
            driver = 0 if self.driver_pid is None else status_kb("VmRSS", self.driver_pid)
            sched = None if self.scheduler_pid is None else status_kb("VmRSS", self.scheduler_pid)
            self.timeline.append([round(now - self._began, 1), driver or 0, sched or 0])


def run_command(run: Run, workload: Workload, cluster: Cluster, scratch: Path) -> Run:
    """Run ``run.argv`` to its end; measure it and check its output against workload."""
    out_path = scratch / "out.jsonl"
    err_path = scratch / "err.txt"
    cluster.counts()  # forget what earlier runs (and warm-ups) left in the counts
    if run.phase != "warmup":
        run.others_before = wait_quiet(QUIET_CORES, QUIET_WAIT[0])
    sched = cluster.scheduler_pid
    run.scheduler_rss_before_kb = status_kb("VmRSS", sched)
    reset_peak(sched)
    sched_before = proc_cpu(sched)
    workers_before = cluster.workers_cpu()
    busy_before = machine_busy_s()
    ours_before = tree_cpu(os.getpid())
    bench_before = time.process_time()
    first: list[float] = []
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(
            run.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=scratch,
            env=cluster.env,
            start_new_session=True,
        )
        pipe = proc.stdout
        assert pipe is not None

        def copy() -> None:
            while chunk := os.read(pipe.fileno(), 1 << 20):
                if not first:
                    first.append(time.perf_counter())
                out.write(chunk)

        reader = threading.Thread(target=copy, name="reader", daemon=True)
        reader.start()
        watch = Watch(proc.pid, sched, cluster)
        timer = threading.Timer(RUN_TIMEOUT_S, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            # Wait for its exit without reaping it: its zombie still holds its CPU times,
            # and those of the children it waited for (the cluster driver).
            wait_unreaped(proc.pid)
            ended = time.perf_counter()
            cpu = proc_cpu(proc.pid)
            _, status, _ = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            watch.stop()
            with contextlib.suppress(OSError):  # whatever it left in its group
                os.killpg(proc.pid, signal.SIGKILL)
        reader.join()
        pipe.close()
    run.wall_s = ended - began
    run.tps = run.n / run.wall_s
    run.first_result_s = first[0] - began if first else None
    run.returncode = proc.returncode
    if cpu is not None:
        run.cmd_cpu_s, run.cmd_children_cpu_s = cpu
    sched_after = proc_cpu(sched)
    if sched_before is not None and sched_after is not None:
        run.scheduler_cpu_s = sched_after[0] - sched_before[0]
    run.workers_cpu_s = cluster.workers_cpu() - workers_before
    run.machine_busy_s = machine_busy_s() - busy_before
    run.others_cpu_s = max(0.0, run.machine_busy_s - (tree_cpu(os.getpid()) - ours_before))
    run.bench_cpu_s = time.process_time() - bench_before
    watch.scheduler_peak_kb = higher_peak(watch.scheduler_peak_kb, status_kb("VmHWM", sched))
    run.driver_peak_kb = watch.driver_peak_kb
    run.driver_cpu_sampled_s = watch.driver_cpu_s
    run.scheduler_peak_kb = watch.scheduler_peak_kb
    run.cmd_peak_kb = watch.cmd_peak_kb
    run.timeline = watch.timeline
    if run.method == "cluster":
        run.driver_cpu_s = run.cmd_children_cpu_s
    elif run.method == "plain-dask":
        run.driver_cpu_s = run.cmd_cpu_s
    counts = cluster.counts()
    if counts is not None:
        run.batches = int(counts["batches"])
        run.dask_tasks = int(counts["tasks"])
        run.batch_compute_s = [round(float(s), 3) for s in counts["compute"]]
    run.problems = check_output(out_path, workload)
    if watch.problem is not None:
        run.problems.insert(0, watch.problem)
    if run.returncode != 0:
        run.problems.insert(0, f"exit status {run.returncode}")
    run.ok = not run.problems
    if not run.ok:
        run.stderr_tail = err_path.read_bytes()[-3000:].decode(errors="replace")
    return run


# -- the plain Dask client -----------------------------------------------------------------


def plain_dask_driver(address: str, path: str) -> int:
    """One ``client.submit`` per task, then ``as_completed``; a JSON line per result on
    stdout, as leanpool prints them."""
    Client, as_completed = distributed().Client, distributed().as_completed
    client = Client(address, timeout=60)  # the default client: as_completed uses it
    ids: dict[str, int] = {}
    futures = []
    with open(path, "rb") as f:
        for line in f:
            task = json.loads(line)
            future = client.submit(
                subprocess.run, ["/bin/sh", "-c", task["cmd"]], capture_output=True, pure=False
            )
            ids[str(future.key)] = task["id"]
            futures.append(future)
    out = sys.stdout.buffer
    # with_results: the results are gathered in the background as tasks finish (in a
    # trial, faster than a blocking future.result() on each).
    completed = as_completed(futures, with_results=True)
    futures.clear()  # each future is released as soon as its result is written
    for future, done in completed:
        record = {
            "id": ids.pop(str(future.key)),
            "status": done.returncode,
            "stdout": done.stdout.decode(errors="replace"),
            "stderr": done.stderr.decode(errors="replace"),
        }
        out.write(json.dumps(record).encode() + b"\n")
        del future, done
    out.flush()
    client.close()
    return 0


# -- the phases ----------------------------------------------------------------------------


def argv_for(
    method: str, workload: Workload, cluster: Cluster, threads: int, script: Path
) -> tuple[list[str], int]:
    """The command of one method, and the tasks each batch (or runner) runs at once."""
    if method == "local":
        per = workload.parallel
        return [
            sys.executable,
            "-m",
            "leanpool",
            "run",
            str(workload.path),
            "-j",
            str(per),
            "--no-progress",
        ], per
    if method == "cluster":
        per = max(1, workload.parallel // (WORKERS * threads))
        return [
            sys.executable,
            "-m",
            "leanpool",
            "run",
            str(workload.path),
            "--cluster",
            cluster.address,
            "-j",
            str(per),
            "--no-progress",
        ], per
    return [
        sys.executable,
        str(script),
        "--plain-dask-driver",
        cluster.address,
        str(workload.path),
    ], 1


@dataclass
class Report:
    meta: dict[str, Any]
    args: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self, out: str) -> None:
        data = {
            "meta": self.meta,
            "args": self.args,
            "notes": self.notes,
            "runs": [asdict(r) for r in self.runs],
            "summary": summarize(self.runs),
        }
        save_json(out + ".json", data)
        Path(out + ".txt").write_text("\n".join(self.lines) + "\n")


def describe(run: Run) -> str:
    verdict = "ok" if run.ok else "FAILED: " + "; ".join(run.problems[:3])
    batches = "" if run.batches is None else f", {run.batches} batches"
    tasks = "" if not run.dask_tasks else f", {run.dask_tasks} dask tasks"
    driver = run.per_task_us(run.driver_cpu_s)
    others = run.others_cpu_s / run.wall_s if run.wall_s else 0.0
    return (
        f"  {run.workload:<6} {run.method:<11} rep {run.rep}: {run.wall_s:7.2f} s "
        f"{run.tps:8,.0f}/s  driver {fmt_us(driver)} us/task, scheduler "
        f"{fmt_us(run.per_task_us(run.scheduler_cpu_s))} us/task{batches}{tasks}, "
        f"other programs {others:.2f} cores  {verdict}"
    )


def speed_phase(
    report: Report,
    cluster: Cluster,
    workloads: list[Workload],
    repeats: int,
    scratch: Path,
    script: Path,
    methods: Sequence[str],
    phase: str,
) -> None:
    for workload in workloads:
        for rep in range(repeats):
            for method in methods:
                argv, per = argv_for(method, workload, cluster, cluster.nthreads, script)
                run = Run(
                    phase, workload.name, method, rep, workload.n, per, cluster.nthreads, argv
                )
                run_command(run, workload, cluster, scratch)
                report.runs.append(run)
                report.say(describe(run))
                if not run.ok:
                    report.say(f"    stderr tail: {run.stderr_tail[-600:]!r}")
                gone = cluster.problem()
                if gone is not None:
                    raise ClusterGone(gone)


def warm_up(
    report: Report,
    cluster: Cluster,
    scratch: Path,
    script: Path,
    methods: Sequence[str] = METHODS,
) -> None:
    """One small unmeasured run of each method: the workers import leanpool, the page
    cache holds the interpreter and the libraries."""
    workload = write_workload("echo", 200, 8, scratch, 1)
    for method in methods:
        argv, per = argv_for(method, workload, cluster, cluster.nthreads, script)
        run = Run("warmup", "echo", method, 0, workload.n, per, cluster.nthreads, argv)
        run_command(run, workload, cluster, scratch)
        if not run.ok:
            report.say(f"  warm-up {method} FAILED: {run.problems} {run.stderr_tail[-600:]!r}")


# -- statistics ----------------------------------------------------------------------------


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per (phase, workload, method): rates and costs over its good runs; per workload,
    the paired ratios; the memory runs as they are."""
    groups: dict[tuple[str, str, str, int], list[Run]] = {}
    for run in runs:
        if run.phase in ("startup", "speed", "threads4"):
            key = (run.phase, run.workload, run.method, run.threads_per_worker)
            groups.setdefault(key, []).append(run)
    rows: list[dict[str, Any]] = []
    for (phase, workload, method, threads), group in groups.items():
        good = [r for r in group if r.ok]
        rows.append(
            {
                "phase": phase,
                "workload": workload,
                "method": method,
                "threads_per_worker": threads,
                "parallel_per_batch": group[0].parallel_per_batch,
                "n": group[0].n,
                "runs": len(group),
                "failed": len(group) - len(good),
                "tps_best": max((r.tps for r in good), default=None),
                "tps_median": median_or_none([r.tps for r in good]),
                "wall_median_s": median_or_none([r.wall_s for r in good]),
                "first_result_median_s": median_or_none(
                    [r.first_result_s for r in good if r.first_result_s is not None]
                ),
                "driver_us_per_task": median_or_none(
                    [r.driver_cpu_s / r.n * 1e6 for r in good if r.driver_cpu_s is not None]
                ),
                "driver_sampled_us_per_task": median_or_none(
                    [
                        r.driver_cpu_sampled_s / r.n * 1e6
                        for r in good
                        if r.driver_cpu_sampled_s is not None
                    ]
                ),
                "cmd_us_per_task": median_or_none([r.cmd_cpu_s / r.n * 1e6 for r in good]),
                "scheduler_us_per_task": median_or_none(
                    [r.scheduler_cpu_s / r.n * 1e6 for r in good]
                ),
                "workers_us_per_task": median_or_none([r.workers_cpu_s / r.n * 1e6 for r in good]),
                "machine_us_per_task": median_or_none([r.machine_busy_s / r.n * 1e6 for r in good]),
                "ours_us_per_task": median_or_none(
                    [(r.machine_busy_s - r.others_cpu_s) / r.n * 1e6 for r in good]
                ),
                "others_cores_max": max(
                    (r.others_cpu_s / r.wall_s for r in good if r.wall_s), default=None
                ),
                "batches_median": median_or_none(
                    [r.batches for r in good if r.batches is not None]
                ),
                "batch_compute_median_s": median_or_none(
                    [s for r in good for s in r.batch_compute_s]
                ),
                "batch_compute_max_s": max(
                    (s for r in good for s in r.batch_compute_s), default=None
                ),
                "driver_peak_mb": max(
                    (r.driver_peak_kb / 1024 for r in good if r.driver_peak_kb), default=None
                ),
            }
        )
    # A driver's CPU beyond its fixed cost (importing dask, connecting, starting): the
    # same run's CPU less the median of the one-task runs, over the tasks beyond one.
    fixed = {
        row["method"]: median_or_none(
            [
                r.driver_cpu_s
                for r in runs
                if r.phase == "startup"
                and r.ok
                and r.method == row["method"]
                and r.driver_cpu_s is not None
            ]
        )
        for row in rows
        if row["phase"] == "startup"
    }
    for row in rows:
        base = fixed.get(row["method"])
        good = [
            r
            for r in groups[
                (row["phase"], row["workload"], row["method"], row["threads_per_worker"])
            ]
            if r.ok
        ]
        marginal = [
            (r.driver_cpu_s - base) / (r.n - 1) * 1e6
            for r in good
            if base is not None and r.driver_cpu_s is not None and r.n > 1
        ]
        row["driver_fixed_s"] = base
        row["driver_marginal_us_per_task"] = median_or_none(marginal)
    # The scheduler's own idle cost (heartbeats, periodic work): its CPU per second while
    # a local run goes on (no Dask work); what it spends beyond that is the runs' work.
    idle = median_or_none(
        [
            r.scheduler_cpu_s / r.wall_s
            for r in runs
            if r.ok and r.method == "local" and r.phase == "speed" and r.wall_s
        ]
    )
    for row in rows:
        good = [
            r
            for r in groups[
                (row["phase"], row["workload"], row["method"], row["threads_per_worker"])
            ]
            if r.ok
        ]
        beyond = [(r.scheduler_cpu_s - (idle or 0.0) * r.wall_s) for r in good]
        row["scheduler_idle_cores"] = idle
        row["scheduler_beyond_idle_us_per_task"] = (
            None
            if idle is None
            else median_or_none([b / r.n * 1e6 for b, r in zip(beyond, good, strict=True)])
        )
        per_batch = [b / r.batches * 1e3 for b, r in zip(beyond, good, strict=True) if r.batches]
        row["scheduler_beyond_idle_ms_per_batch"] = (
            None if idle is None or row["method"] != "cluster" else median_or_none(per_batch)
        )
    ratios = []
    speed = [r for r in runs if r.phase == "speed"]
    for workload in dict.fromkeys(r.workload for r in speed):
        for other in ("local", "plain-dask"):
            pairs = []
            for rep in sorted({r.rep for r in speed}):
                by = {r.method: r for r in speed if r.workload == workload and r.rep == rep}
                a, b = by.get("cluster"), by.get(other)
                if a is not None and b is not None and a.ok and b.ok:
                    pairs.append(a.tps / b.tps)
            ratios.append(
                {
                    "workload": workload,
                    "ratio": f"cluster/{other}",
                    "pairs": [round(p, 3) for p in pairs],
                    "best": max(pairs, default=None),
                    "median": median_or_none(pairs),
                }
            )
    memory = [
        {
            "n": r.n,
            "ok": r.ok,
            "wall_s": r.wall_s,
            "tps": r.tps,
            "driver_peak_mb": None if r.driver_peak_kb is None else r.driver_peak_kb / 1024,
            "scheduler_rss_before_mb": None
            if r.scheduler_rss_before_kb is None
            else r.scheduler_rss_before_kb / 1024,
            "scheduler_peak_mb": None
            if r.scheduler_peak_kb is None
            else r.scheduler_peak_kb / 1024,
            "cli_peak_mb": None if r.cmd_peak_kb is None else r.cmd_peak_kb / 1024,
            "driver_us_per_task": r.per_task_us(r.driver_cpu_s),
            "driver_marginal_us_per_task": None
            if r.driver_cpu_s is None or fixed.get("cluster") is None
            else (r.driver_cpu_s - (fixed["cluster"] or 0.0)) / (r.n - 1) * 1e6,
            "scheduler_us_per_task": r.per_task_us(r.scheduler_cpu_s),
            "batches": r.batches,
            "batch_compute_median_s": median_or_none(r.batch_compute_s),
            "others_cores": r.others_cpu_s / r.wall_s if r.wall_s else None,
            "rss_along_mb": [
                [p[0], round(p[1] / 1024, 1), round(p[2] / 1024, 1)] for p in spread(r.timeline, 6)
            ],
        }
        for r in runs
        if r.phase == "memory"
    ]
    return {"methods": rows, "ratios": ratios, "memory": memory}


Row = dict[str, Any]
"""A row of ``summarize``'s tables, as the record saves it."""


def cell(key: str, spec: str = "") -> Callable[[Row], str]:
    """A table cell showing a row's value at key (formatted by spec), "-" for None."""
    return lambda row: fmt(row[key], spec)


def print_summary(report: Report) -> None:
    summary = summarize(report.runs)
    say = report.say
    say("\nSpeed (good runs only; tps best/median; CPU medians, microseconds per task)")
    speed: list[Column[Row]] = [
        Column("workload", 8, cell("workload"), left=True),
        Column("method", 11, cell("method"), left=True),
        Column("thr", 3, cell("threads_per_worker")),
        Column("-j", 3, cell("parallel_per_batch")),
        Column("n", 6, cell("n")),
        Column("best/s", 8, cell("tps_best", ",.0f")),
        Column("median/s", 8, cell("tps_median", ",.0f")),
        Column("wall s", 7, cell("wall_median_s", ".2f")),
        Column("first s", 7, cell("first_result_median_s", ".2f")),
        Column("driver", 7, cell("driver_us_per_task", ",.0f")),
        Column("drv+", 6, cell("driver_marginal_us_per_task", ",.0f")),
        Column("sched", 6, cell("scheduler_us_per_task", ",.0f")),
        Column("workers", 7, cell("workers_us_per_task", ",.0f")),
        Column("ours", 7, cell("ours_us_per_task", ",.0f")),
        Column("others", 6, cell("others_cores_max", ".2f")),
        Column("batches", 7, cell("batches_median", ".0f")),
        Column("batch s", 7, cell("batch_compute_median_s", ".2f")),
        Column("fail", 4, cell("failed")),
    ]
    for line in table(speed, summary["methods"]):
        say(line)
    say("  driver: the cluster driver (cluster) or the plain Dask client, per task; drv+:")
    say("  the same beyond its fixed cost (the median one-task run's), per task beyond one;")
    say("  sched: the scheduler; workers: both workers' process trees (tasks included);")
    say("  ours: all CPU of this benchmark's processes (the machine's busy CPU less other")
    say("  programs'); others: the most cores other programs used during a run; batch s:")
    say("  median compute seconds of leanpool's batches on a worker; thr: threads per")
    say("  worker; -j: tasks at once per batch (runner).")
    say("\nCosts per task and per batch (medians)")

    def bound(row: Row) -> str:
        """The tasks/s one driver could keep up with at its cost beyond its fixed one."""
        marginal = row["driver_marginal_us_per_task"]
        return "-" if not marginal else f"{1e6 / marginal:,.0f}/s"

    def per_batch(row: Row) -> str:
        batches = row["batches_median"]
        return "-" if not batches else f"{row['n'] / batches:,.0f}"

    costs: list[Column[Row]] = [
        *speed[:3],
        Column("driver us", 9, cell("driver_us_per_task", ",.0f")),
        Column("beyond fixed", 12, cell("driver_marginal_us_per_task", ",.0f")),
        Column("1/that", 8, bound),
        Column("sched us", 8, cell("scheduler_us_per_task", ",.0f")),
        Column("beyond idle", 11, cell("scheduler_beyond_idle_us_per_task", ",.0f")),
        Column("ms/batch", 8, cell("scheduler_beyond_idle_ms_per_batch", ".1f")),
        Column("tasks/batch", 11, per_batch),
    ]
    rows = [
        row for row in summary["methods"] if row["phase"] != "startup" and row["method"] != "local"
    ]
    for line in table(costs, rows):
        say(line)
    idle = next((r["scheduler_idle_cores"] for r in summary["methods"]), None)
    say("  beyond fixed: the driver's CPU less a one-task run's, per task beyond one; 1/that:")
    say("  the tasks/s one driver could keep up with at that cost, one core to itself;")
    say(
        "  beyond idle: the scheduler's CPU less its idle rate "
        f"({'-' if idle is None else f'{idle:.3f}'} cores, measured during the local runs)."
    )
    say("\nPaired ratios of tasks/s (same repeat)")
    for ratio in summary["ratios"]:
        pairs = ", ".join(f"{p:.2f}" for p in ratio["pairs"])
        best = "-" if ratio["best"] is None else f"{ratio['best']:.2f}"
        median = "-" if ratio["median"] is None else f"{ratio['median']:.2f}"
        say(
            f"  {ratio['workload']:<6} {ratio['ratio']:<20} best {best}  median {median}  ({pairs})"
        )
    if summary["memory"]:
        say("\nMemory: `true` tasks on the cluster, -j 8 per batch (peak RSS, MB)")
        memory: list[Column[Row]] = [
            Column("n", 9, cell("n", ",")),
            Column("wall s", 7, cell("wall_s", ".1f")),
            Column("tasks/s", 8, cell("tps", ",.0f")),
            Column("driver", 7, cell("driver_peak_mb", ".1f")),
            Column("sched before", 12, cell("scheduler_rss_before_mb", ".1f")),
            Column("sched peak", 10, cell("scheduler_peak_mb", ".1f")),
            Column("CLI", 6, cell("cli_peak_mb", ".1f")),
            Column("drv us", 6, cell("driver_us_per_task", ",.0f")),
            Column("drv+", 6, cell("driver_marginal_us_per_task", ",.0f")),
            Column("sch us", 6, cell("scheduler_us_per_task", ",.0f")),
            Column("batches", 7, lambda m: str(m["batches"] or "-")),
            Column("ok", 2, cell("ok"), left=True, gap="  "),
        ]
        for line in table(memory, summary["memory"]):
            say(line)
        say("  RSS along each run (seconds: driver MB / scheduler MB):")
        for m in summary["memory"]:
            along = ", ".join(f"{t:.0f} s: {d:.1f}/{c:.1f}" for t, d, c in m["rss_along_mb"])
            say(f"  {m['n']:>9,}  {along or '-'}")
    print_targets(report, summary)


def print_targets(report: Report, summary: dict[str, Any]) -> None:
    say = report.say
    say("\nTargets")
    for ratio in summary["ratios"]:
        goal = 0.8 if ratio["ratio"] == "cluster/local" else 3.0
        if ratio["median"] is None:
            say(f"  NOT MEASURED  {ratio['workload']} {ratio['ratio']} >= {goal}")
            continue
        met = "MET    " if ratio["median"] >= goal else "NOT MET"
        say(
            f"  {met}  {ratio['workload']} {ratio['ratio']} >= {goal}: median of pairs "
            f"{ratio['median']:.2f} (best {ratio['best']:.2f})"
        )
    memory = [m for m in summary["memory"] if m["ok"]]
    if len(memory) >= 2:
        low, high = memory[0], memory[-1]
        for key, name in (("driver_peak_mb", "driver"), ("scheduler_peak_mb", "scheduler")):
            if low[key] is None or high[key] is None:
                continue
            growth = high[key] / low[key] - 1
            seen = (
                f"{low[key]:.1f} MB at {low['n']:,} tasks, {high[key]:.1f} MB at "
                f"{high['n']:,} ({growth:+.0%})"
            )
            if high["n"] < 1_000_000:
                verdict = "NOT MEASURED"
            else:
                verdict = "MET    " if growth <= 0.25 else "NOT MET"
            say(f"  {verdict}  {name} peak RSS flat (within 25%) to 1,000,000 tasks: {seen}")


# -- main ----------------------------------------------------------------------------------


def machine_info(commit: str, src: Path) -> dict[str, Any]:
    """What the numbers depend on, dask's versions and the commit measured among them."""
    basics = machine_basics()
    bin_sh = basics.pop("bin_sh")  # after dask's versions, where the records have it
    return {
        **basics,
        "dask": importlib.metadata.version("dask"),
        "distributed": importlib.metadata.version("distributed"),
        "bin_sh": bin_sh,
        "commit": git("rev-parse", commit),
        "commit_short": git("rev-parse", "--short", commit),
        "measured_source": f"git archive {commit} src, unpacked to {src} (PYTHONPATH)",
        "checkout_src_dirty": src_dirty(),
        "argv": sys.argv,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="leanpool on a 2-worker Dask cluster vs local leanpool vs plain Dask."
    )
    parser.add_argument("-n-echo", type=int, default=20_000, help="echo tasks per run (20000)")
    parser.add_argument("-n-sleep", type=int, default=4_000, help="sleep tasks per run (4000)")
    parser.add_argument("-r", "--repeats", type=int, default=3, help="repeats (3)")
    parser.add_argument(
        "--memory-sizes", default="10000,100000", help="`true` task counts of the memory runs"
    )
    parser.add_argument(
        "--memory-big",
        type=int,
        default=1_000_000,
        help="one more memory run of this many tasks (0: none) ...",
    )
    parser.add_argument(
        "--memory-big-if",
        type=float,
        default=180.0,
        help="... when the largest --memory-sizes run took under this many seconds (180)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=1500.0,
        help="... and when it should end within this many seconds of the start (1500)",
    )
    parser.add_argument(
        "--workloads", default="echo,sleep", help="of the speed phases (echo,sleep)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=QUIET_WAIT_S,
        help="before each run, wait up to this many seconds for other programs to use "
        f"under {QUIET_CORES} cores ({QUIET_WAIT_S:.0f})",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma list of {','.join(PHASES)} (default all)",
    )
    parser.add_argument("--commit", default="HEAD", help="the leanpool measured (HEAD)")
    parser.add_argument(
        "--report",
        metavar="OUT",
        help="run nothing: print OUT.json's runs and summary again, rewrite OUT.txt",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the sleep durations")
    parser.add_argument(
        "--out",
        default=str(HERE / "results" / f"cluster-{time.strftime('%Y-%m-%d')}"),
        help="write OUT.json and OUT.txt",
    )
    parser.add_argument(
        "--plain-dask-driver", nargs=2, metavar=("ADDRESS", "FILE"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def say_header(report: Report) -> None:
    meta = report.meta
    report.say(
        f"{meta['date']}  {meta['nproc']} CPUs, {meta['memory']}, kernel {meta['kernel']}, "
        f"Python {meta['python']}, dask {meta['dask']}, distributed {meta['distributed']}"
    )
    report.say(
        f"measured: leanpool at {meta['commit_short']} ({meta['measured_source']}); "
        f"checkout src/ dirty: {meta['checkout_src_dirty']}"
    )
    report.say(f"command: {' '.join(meta['argv'])}")


def rerender(out: str) -> int:
    """Print the report of a saved run again, from its raw runs (OUT.json), with this
    version's summary; rewrite OUT.txt and OUT.json's summary."""
    data = json.loads(Path(out + ".json").read_text())
    report = Report(data["meta"], data["args"], [Run(**r) for r in data["runs"]])
    report.notes = list(data.get("notes", []))
    say_header(report)
    report.say(f"(rendered again from {Path(out).name}.json by --report)")
    phase = None
    for run in report.runs:
        if run.phase != phase:
            phase = run.phase
            report.say(f"\n== {phase}")
        report.say(describe(run))
    for note in report.notes:
        report.say("  " + note)
    print_summary(report)
    report.save(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_dask_driver:
        return plain_dask_driver(*args.plain_dask_driver)
    if args.report:
        return rerender(args.report.removesuffix(".json"))
    began = time.monotonic()
    script = Path(__file__).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="leanpool-cluster-bench-"))
    src = unpack_source(args.commit, scratch)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    meta = machine_info(args.commit, src)
    report = Report(meta, {k: v for k, v in vars(args).items() if k != "plain_dask_driver"})
    say_header(report)
    sizes = [int(s) for s in args.memory_sizes.split(",") if s.strip()]
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    workloads = {w.strip() for w in args.workloads.split(",") if w.strip()}
    QUIET_WAIT[0] = args.quiet_wait
    if phases - set(PHASES):
        print(f"unknown phases {sorted(phases - set(PHASES))}; choose from {PHASES}")
        return 2
    try:
        with terminated_on_sigterm(), contextlib.ExitStack() as stack:
            echo = write_workload("echo", args.n_echo, 8, scratch, args.seed)
            sleep = write_workload("sleep", args.n_sleep, 16, scratch, args.seed)
            if phases & {"startup", "speed"}:
                cluster = stack.enter_context(Cluster(scratch, 1, env, "t1"))
                report.say(
                    f"\ncluster {cluster.address}: {WORKERS} workers x 1 thread; workers' "
                    f"leanpool: {', '.join(cluster.leanpool_on_workers)}"
                )
                warm_up(report, cluster, scratch, script)
            if "startup" in phases:
                one = write_workload("echo", 1, 8, scratch, args.seed)
                report.say("\n== start-up: one `echo 0` task, 3 repeats, A B C in turn")
                speed_phase(report, cluster, [one], 3, scratch, script, METHODS, "startup")
            if "speed" in phases:
                report.say(f"\n== speed: {args.repeats} repeats, A B C in turn")
                speed_phase(
                    report,
                    cluster,
                    [w for w in (echo, sleep) if w.name in workloads],
                    args.repeats,
                    scratch,
                    script,
                    METHODS,
                    "speed",
                )
                report.save(args.out)
            stack.close()
            if "threads4" in phases:
                with Cluster(scratch, 4, env, "t4") as cluster:
                    report.say(
                        f"\n== plain Dask on {WORKERS} workers x 4 threads ({cluster.address}),"
                        " once per workload"
                    )
                    warm_up(report, cluster, scratch, script, ("plain-dask",))
                    speed_phase(
                        report,
                        cluster,
                        [w for w in (echo, sleep) if w.name in workloads],
                        1,
                        scratch,
                        script,
                        ("plain-dask",),
                        "threads4",
                    )
                    report.save(args.out)
            if "memory" in phases:
                cluster = stack.enter_context(Cluster(scratch, 1, env, "mem"))
                report.say(
                    f"\n== memory: `true` tasks on a fresh cluster ({cluster.address}), "
                    "-j 8 per batch"
                )
                warm_up(report, cluster, scratch, script, ("cluster",))
                planned = list(sizes)
                for i, n in enumerate(planned):
                    workload = write_workload("true", n, 8 * WORKERS, scratch, args.seed)
                    argv_, per = argv_for("cluster", workload, cluster, 1, script)
                    run = Run("memory", "true", "cluster", 0, n, per, 1, argv_)
                    run_command(run, workload, cluster, scratch)
                    workload.path.unlink()
                    report.runs.append(run)
                    if (gone := cluster.problem()) is not None:
                        report.say(describe(run))
                        raise ClusterGone(gone)
                    report.say(
                        describe(run) + f"; driver peak {fmt_mb(run.driver_peak_kb)} MB, "
                        f"scheduler peak {fmt_mb(run.scheduler_peak_kb)} MB"
                    )
                    report.save(args.out)
                    last = i == len(planned) - 1
                    if last and args.memory_big > n and n == max(sizes):
                        guess = args.memory_big / run.tps * 1.2 + 30
                        spent = time.monotonic() - began
                        if run.wall_s < args.memory_big_if and spent + guess < args.budget_s:
                            planned.append(args.memory_big)
                        else:
                            note = (
                                f"{args.memory_big:,} tasks not run: {n:,} took "
                                f"{run.wall_s:.0f} s (limit {args.memory_big_if:.0f} s); "
                                f"{spent:.0f} s spent, about {guess:.0f} s more needed "
                                f"(budget {args.budget_s:.0f} s)"
                            )
                            report.notes.append(note)
                            report.say("  " + note)
        print_summary(report)
        report.say(f"\ntotal wall time of the benchmark: {time.monotonic() - began:.0f} s")
    except ClusterGone as exc:
        report.notes.append(f"stopped: {exc}")
        report.say(f"\nSTOPPED: {exc}")
        print_summary(report)
        return 1
    finally:
        report.save(args.out)
        if all(r.ok for r in report.runs):
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch} (a run failed)", file=sys.stderr)
    return 0 if all(r.ok for r in report.runs) else 1


if __name__ == "__main__":
    sys.exit(main())

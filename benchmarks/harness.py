"""What every benchmark here measures with: /proc probes, the caller's heap, paired
statistics, the record of what was measured, and tables.

Why one module: ``bench.py``, ``calls.py`` and ``cluster_bench.py`` each had their own
copy of these helpers, and the copies had drifted (three readers of a
``/proc/PID/status`` field, two runner finders matching different marks, a "checkout
dirty" that said clean when git could not tell).  One copy means a better probe reaches
every benchmark at once, and the scripts keep only what is theirs: their workloads,
their methods and their targets.  Where copies differed, the docstring says which
behaviour was kept.

Stdlib only, and it imports no leanpool at import time: a script imports it before
``srcpath.use_source_dir`` has put the leanpool to measure first on ``sys.path``.
Importing it runs nothing (tarfile is imported where used): a pool worker that imports
a script to find its functions pays only for the import.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from srcpath import build_engine, source_hash  # benchmarks/srcpath.py, beside this file

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parent
BUILD_DIR: Final = HERE / "_build"
MIB: Final = 1 << 20
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
"""The unit of the CPU times in ``/proc``: ticks per second (100 on Linux).  Every tick
count here is divided by it; calls.py's copies multiplied by ``1 / CLK_TCK`` instead,
which can be off from the true value in the last bit."""

R = TypeVar("R")
T = TypeVar("T")
P = TypeVar("P", bound="Poller")


class VerificationError(Exception):
    """A method's results were wrong: its numbers must not be reported."""


# -- /proc probes ----------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size now, from /proc/self/statm: one small read, cheap
    enough to poll while a heap grows or results stream."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def status_kb(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``); None once the
    process is gone, and for a zombie (it has no memory lines any more)."""
    key = field.encode() + b":"
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak(pid: int | str = "self") -> None:
    """Reset a process's VmHWM to its current RSS (``clear_refs`` 5), so that each run
    reports its own peak, not the largest since the process started.  Only for this
    process or one of ours; quietly nothing where the kernel refuses."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def stat_ticks(path: str) -> tuple[int, int, int, int] | None:
    """(utime, stime, cutime, cstime) in clock ticks from a ``/proc/PID/stat`` or
    ``/proc/PID/task/TID/stat`` file; None once it is gone.  A zombie still has them:
    read one before it is reaped to get a finished process's CPU.

    The fields are counted from the last ``)``, since the command name in parentheses
    may hold spaces and parentheses itself; after it, field 3 (state) comes first, so
    utime (field 14) is at index 11.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def stat_cpu_s(path: str) -> float | None:
    """The user + system CPU seconds of one process or thread (``stat_ticks``'s path),
    not counting its reaped children."""
    ticks = stat_ticks(path)
    return None if ticks is None else (ticks[0] + ticks[1]) / CLK_TCK


def proc_cpu(pid: int) -> tuple[float, float] | None:
    """(own user+sys, waited-for children's user+sys) CPU seconds of a process; None
    once it is gone.  The second is how a finished command's children (the runner, the
    cluster driver) are measured: read from its zombie, see ``wait_unreaped``."""
    ticks = stat_ticks(f"/proc/{pid}/stat")
    if ticks is None:
        return None
    return (ticks[0] + ticks[1]) / CLK_TCK, (ticks[2] + ticks[3]) / CLK_TCK


def cpu_times() -> tuple[float, float]:
    """(this process, its waited-for descendants) user+sys CPU seconds, every thread.

    getrusage, not os.times or /proc: those count in 10 ms clock ticks, too coarse for
    microseconds per task over a one-second run.
    """
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle since boot, all CPUs (/proc/stat):
    user, nice, system, irq, softirq and steal; not idle or iowait.  The guest times
    that follow are already inside user and nice, so they are not added again."""
    with open("/proc/stat", "rb") as f:
        cpu = [int(v) for v in f.readline().split()[1:9]]
    return (sum(cpu) - cpu[3] - cpu[4]) / CLK_TCK


def children_of(pid: int | str) -> list[int]:
    """The live children of a process, from every one of its threads' ``children``
    file (a child belongs to the thread that started it)."""
    out: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out.extend(int(c) for c in children.read_text().split())
    return out


def descendants(pid: int | str = "self") -> list[tuple[int, int | str]]:
    """Every live descendant of a process, each with its parent."""
    out: list[tuple[int, int | str]] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child in children_of(parent):
            out.append((child, parent))
            todo.append(child)
    return out


def tree_of(root: int) -> list[int]:
    """The process and every live descendant."""
    return [root, *(pid for pid, _ in descendants(root))]


def tree_cpu(root: int) -> float:
    """CPU seconds of a process tree: each live process's own and its reaped children's
    (a child reaped between two reads moves from its own count to its parent's)."""
    total = 0.0
    for pid in tree_of(root):
        cpu = proc_cpu(pid)
        if cpu is not None:
            total += cpu[0] + cpu[1]
    return total


def cmdline(pid: int) -> bytes:
    """A process's NUL-separated command line; empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def find_child(pid: int | str, *marks: bytes) -> int | None:
    """The first child of a process whose command line holds one of marks."""
    for child in children_of(pid):
        line = cmdline(child)
        if any(mark in line for mark in marks):
            return child
    return None


def find_runner() -> int | None:
    """The pid of the leanpool runner among this process's children, if it runs yet.

    Of the two copies this replaces, the wider one is kept: a child whose command line
    names ``leanpool._runner`` (the runner's bootstrap imports its main from there), or
    holds the imported package's directory as a whole argument (how the runner is told
    where to import from, so a runner started some other way is found too).  The other
    copy matched ``leanpool._runner.main`` only.
    """
    marks = [b"leanpool._runner"]
    module = sys.modules.get("leanpool")
    if module is not None and module.__file__:
        marks.append(b"\0" + os.path.dirname(module.__file__).encode() + b"\0")
    return find_child("self", *marks)


def wait_unreaped(pid: int) -> None:
    """Wait for a child's exit without reaping it: its zombie keeps its CPU times, and
    those of the children it waited for, for ``proc_cpu`` or ``stat_ticks`` to read."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def higher_peak(old: int | None, new: int | None) -> int | None:
    """The larger of two peaks where either may be unknown (None)."""
    if new is None:
        return old
    return new if old is None else max(old, new)


class Poller:
    """A caller thread that calls ``sample`` every ``interval`` seconds until stopped:
    the base of a watch that follows other processes' peaks while a run goes on.

    It waits first and samples after, as cluster_bench.py's watch did (its timeline's
    first point stays one interval in); bench.py's sampled first, which changed nothing
    it reports: the peaks read are the kernel's own high-water marks (VmHWM), which a
    later sample still sees, so only what comes after the last sample is missed.
    ``cpu_s`` is the thread's own CPU time: measurement, not the cost of what it watches.
    """

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> None:
        """Read what is watched; called from the thread."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self: P) -> P:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        began = time.thread_time()
        while not self._stop.wait(self.interval):
            self.sample()
        self.cpu_s = time.thread_time() - began


# -- other programs' load: the noise a run suffered -------------------------------------------


OURS: Final[set[int]] = set()
"""Every process seen as a descendant of this one: a pool process that outlives its
pool's shutdown as an orphan is still ours, not noise."""


def remember_ours() -> None:
    """Add this process's live descendants to ``OURS``."""
    OURS.update(pid for pid, _ in descendants())


def foreign_cpu() -> dict[int, float]:
    """CPU seconds so far of every process outside this one's tree (and not pid 1, which
    inherits orphans, ours too): the difference of two snapshots is the other processes'
    load in between, the noise a run suffered.  A lower bound: a process that starts or
    ends in between is left out (its reaped children's CPU would come all at once, when
    its parent reaps it, whenever it ran)."""
    remember_ours()
    ours = {os.getpid(), 1} | OURS
    out: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        cpu = stat_cpu_s(f"/proc/{entry.name}/stat")
        if cpu is not None:
            out[int(entry.name)] = cpu
    return out


def foreign_load(a: dict[int, float], b: dict[int, float], seconds: float, cpus: int) -> float:
    """Other processes' CPU between two ``foreign_cpu`` snapshots, as a share of all CPUs."""
    busy = sum(max(0.0, cpu - a[pid]) for pid, cpu in b.items() if pid in a and pid not in OURS)
    return busy / (seconds * cpus) if seconds > 0 else 0.0


def top_foreign(a: dict[int, float], b: dict[int, float]) -> str:
    """The other process that took the most CPU between two snapshots, for the record."""
    deltas = [(cpu - a[pid], pid) for pid, cpu in b.items() if pid in a and pid not in OURS]
    if not deltas:
        return ""
    cpu, pid = max(deltas)
    name = cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    return f"{cpu:.2f} s: pid {pid} {name}"


def others_cores(window: float) -> float:
    """Cores the machine spent over ``window`` seconds on processes not of this benchmark
    (not this process or its descendants): another program competing for the CPUs.
    Unlike ``foreign_cpu`` it counts processes that come and go meanwhile."""
    busy, ours = machine_busy_s(), tree_cpu(os.getpid())
    time.sleep(window)
    return max(0.0, (machine_busy_s() - busy) - (tree_cpu(os.getpid()) - ours)) / window


def wait_quiet(limit: float, longest: float) -> float:
    """Wait (up to ``longest`` seconds, one measure per second) until other programs use
    under ``limit`` cores; return the last measure, for the record."""
    deadline = time.monotonic() + longest
    while True:
        cores = others_cores(1.0)
        if cores < limit or time.monotonic() >= deadline:
            return cores
        print(f"    (other programs use {cores:.2f} cores: waiting)", flush=True)


# -- the caller's heap -------------------------------------------------------------------------


class Heap:
    """The caller's memory: many small tuples, ints and dicts, as a real program holds.

    One big bytes object would not do: its pages are few and untouched by a fork's
    copy-on-write bookkeeping in the same way, and a garbage collector never walks it.
    Every object is written when created, so every page is resident and a fork has
    page tables to copy.
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


# -- repeats and paired statistics ---------------------------------------------------------------


def rotated(items: Sequence[T], repeat: int) -> list[T]:
    """The order of one round-robin repeat: rotated by the repeat's number, so that no
    method always runs first or last, where a machine's drift would always meet it."""
    shift = repeat % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def median_or_none(values: Sequence[float]) -> float | None:
    """The median; None for no values (a method whose every run failed)."""
    return statistics.median(values) if values else None


def pair_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i] for each repeat i both have (b[i] not 0)."""
    return [x / y for x, y in zip(a, b, strict=False) if y]


def paired(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The median over repeats of a's rate over b's in the same repeat.

    Repeats are interleaved, so one repeat's runs of a and b saw the same machine: on a
    shared, noisy machine this ratio is steadier than best against best.
    """
    return median_or_none(pair_ratios(a, b))


def ratios(
    table: Mapping[tuple[str, int, str], R],
    workload: str,
    num: str,
    den: str,
    value: Callable[[R], float | None],
    memory: int | None = None,
) -> list[tuple[int, float]]:
    """(caller MB, value(num) / value(den)) at each caller size both methods were
    measured at, from a table keyed (workload, caller MB, method); sizes where either
    value is missing (or den's is 0) are left out, smallest size first."""
    out = []
    for (wl, mb, method), row in sorted(table.items(), key=lambda item: item[0]):
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


def spread(points: list[list[float]], k: int) -> list[list[float]]:
    """k points spread evenly over a timeline, its first and last included."""
    if len(points) <= k:
        return points
    return [points[round(i * (len(points) - 1) / (k - 1))] for i in range(k)]


# -- what was measured: machine, checkout, source -------------------------------------------------


def run_text(*argv: str, cwd: Path = REPO) -> str | None:
    """A command's stripped stdout; None when it fails or cannot start."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git(*args: str) -> str | None:
    """git in the checkout that holds these scripts, whatever the current directory
    (asyncio_bench.py and parallel_bench.py asked the current directory's repository);
    None when git cannot say."""
    return run_text("git", *args)


def src_dirty() -> bool | None:
    """Whether the checkout's src/ has uncommitted changes; None when git cannot tell.

    Of the copies this replaces, one said False (clean) when git failed: unknown is
    kept apart from clean.
    """
    status = git("status", "--porcelain", "--", str(REPO / "src"))
    return None if status is None else bool(status)


def now_text() -> str:
    """The local date and time, as every record here writes it."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def memory_total() -> str:
    """The machine's memory, as /proc/meminfo's first line gives it ("24683784 kB")."""
    return Path("/proc/meminfo").read_text().split("\n", 1)[0].split(":", 1)[1].strip()


def machine_basics() -> dict[str, Any]:
    """What the numbers depend on, recorded with them: date, usable CPUs, memory,
    kernel, Python and the shell tasks run in."""
    return {
        "date": now_text(),
        "nproc": len(os.sched_getaffinity(0)),
        "memory": memory_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bin_sh": os.path.realpath("/bin/sh"),
    }


def measured_leanpool(*, build: bool = False) -> dict[str, Any]:
    """The leanpool imported (the one ``srcpath.use_source_dir`` chose), with the hash
    of its source (``srcpath.source_hash``): the code measured, whatever the checkout's
    HEAD says.  With build, its C engine is compiled first where the tree has only the
    source (an unpacked ``git archive``), as ``pip install`` would; leanpool_engine says
    whether it has one.  Imports leanpool."""
    import leanpool  # here, not at the top: see the module's docstring

    package_dir = os.path.dirname(os.path.abspath(leanpool.__file__ or ""))
    engine = build_engine(package_dir) if build else None
    sha, files = source_hash(package_dir)
    out: dict[str, Any] = {"leanpool": package_dir, "leanpool_sha256": sha}
    if build:
        out["leanpool_engine"] = engine
    out["leanpool_py_files"] = files
    return out


def note_source_at_end(meta: dict[str, Any]) -> None:
    """Hash the measured tree again into ``leanpool_sha256_at_end``; say so loudly when
    it changed during the run (the runner loads the package from disk at each start, so
    the runs may differ).  bench.py's warning is kept: calls.py's said only that the
    source changed, not the new hash or what to do."""
    sha, _ = source_hash(meta["leanpool"])
    meta["leanpool_sha256_at_end"] = sha
    if sha != meta["leanpool_sha256"]:
        print(
            f"\nWARNING: the leanpool source changed during the run (sha256 now {sha}): "
            "the runs may have measured different code; pin it with --src",
            file=sys.stderr,
        )


def unpack_source(commit: str, scratch: Path) -> Path:
    """``git archive COMMIT src``, unpacked under scratch: a copy of leanpool that edits
    to the checkout during a long run cannot change; returns its src directory."""
    import tarfile  # here: a pool worker that imports a script needs none of it

    archive = scratch / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", commit, "src"], stdout=f, cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(scratch / "code", filter="data")
    return scratch / "code" / "src"


def build_ceiling() -> str | None:
    """Compile ceiling.c (the least a pool must do per task) into _build/ when it is
    missing or older than its source; None when there is no C compiler (cc, else gcc:
    bench.py's way; runner_cost.py's copy ran ``cc`` and failed without it)."""
    source, binary = HERE / "ceiling.c", BUILD_DIR / "ceiling"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return str(binary)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    BUILD_DIR.mkdir(exist_ok=True)
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return str(binary)


def save_json(path: str | Path, data: object) -> None:
    """Write a record: indented by one, so that a diff of two records reads line by line."""
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


@contextlib.contextmanager
def terminated_on_sigterm() -> Iterator[None]:
    """A SIGTERM ends the run through the finally clauses (so what the benchmark started,
    a cluster, is torn down, and the record is saved)."""

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- printing ----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    """A number in a table cell, "-" when it was not measured."""
    return "-" if value is None else format(value, spec)


def fmt_us(value: float | None) -> str:
    """Microseconds (or any count) to the unit, with thousands separators."""
    return fmt(value, ",.0f")


def fmt_mb(kb: float | None) -> str:
    """KiB as MB to a tenth."""
    return fmt(None if kb is None else kb / 1024, ",.1f")


def fmt_x(value: float | None) -> str:
    """A ratio to two decimals."""
    return fmt(value, ".2f")


@dataclass(frozen=True)
class Column(Generic[R]):
    """One column of a ``table``: its heading, an optional second heading line (the
    unit), its width, and how a row fills it.

    ``cell`` may return None: that row then has no cell there, and its later cells move
    left (a row's line ends early when the last ones are missing), as the tables did.
    """

    head: str
    width: int
    cell: Callable[[R], str | None]
    unit: str = ""
    left: bool = False
    gap: str = " "
    """What separates it from the column before."""

    def pad(self, text: str) -> str:
        return f"{text:<{self.width}}" if self.left else f"{text:>{self.width}}"


def table(columns: Sequence[Column[R]], rows: Iterable[R], indent: str = "  ") -> list[str]:
    """The lines of a fixed-width table: the headings, the units (when a column has
    one; trailing blanks cut), then one line per row, cells one ``gap`` apart.

    Each column is declared once (heading, unit, width, cell), where the tables had it
    spread over three f-strings that had to agree on its width.
    """

    def line(cells: Iterable[tuple[Column[R], str | None]]) -> str:
        parts: list[str] = []
        for column, text in cells:
            if text is not None:
                parts.append((column.gap if parts else "") + column.pad(text))
        return indent + "".join(parts)

    lines = [line((c, c.head) for c in columns)]
    if any(c.unit for c in columns):
        lines.append(line((c, c.unit) for c in columns).rstrip())
    lines.extend(line((c, c.cell(row)) for c in columns) for row in rows)
    return lines

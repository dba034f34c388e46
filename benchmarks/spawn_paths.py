"""Which way should the runner start a task?  Time each candidate, side by side.

The runner starts every task itself, so the cost of one start is its main per-task cost.
Candidates, each starting ``/bin/sh -c 'echo i'`` with stdout on a pipe, reading the
output and reaping the child, one after another so that only the start path differs:

- ``engine``: the runner's C engine (``leanpool._runner._engine``, its way where it is
  built): two pipes, ``vfork`` and ``exec`` in a new session, drained and reaped in C;
- ``posix_spawn``: ``os.posix_spawn`` with file actions and ``setsid`` (the runner's
  pure-Python way);
- ``popen``: ``subprocess.Popen`` with ``start_new_session=True`` (CPython's vfork path);
- ``popen-fork``: the same with a no-op ``preexec_fn``, which forces a real fork.

For ``engine`` and ``posix_spawn`` it also times the start call alone: how long the
spawner is held, its own work plus the wait for the vfork child to reach ``exec``, which
bounds how many tasks one spawner can start per second whatever the number of cores.

Rounds are interleaved so that machine drift hits every method alike.  ``-m`` grows the
process's heap first, to show which paths pay for the spawner's size.  Every start's
output must be exactly ``i\\n``, or the script stops.  ``--json PATH`` saves the raw
figures (every round of every method, and the machine and checkout they are from).

    python benchmarks/spawn_paths.py -n 500 -r 5 -m 0 --json benchmarks/results/spawn-0mb.json
    python benchmarks/spawn_paths.py -n 200 -r 3 -m 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import MIB, git, rss_bytes  # benchmarks/harness.py, beside this file

Starter = Callable[[int], bytes]

START_CALL: dict[str, list[float]] = {"engine": [], "posix_spawn": []}
"""Seconds in the start call itself, per start, for the starters that can tell."""

_ENGINE: Any = None


def _engine(i: int) -> bytes:
    global _ENGINE
    if _ENGINE is None:
        from leanpool._runner import _engine as engine_module  # type: ignore[attr-defined]

        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        path = os.environb.get(b"PATH", b"/bin:/usr/bin")
        _ENGINE = engine_module.Engine(devnull, dict(os.environb), path, None, True)
    began = time.perf_counter()
    pid = _ENGINE.spawn(["/bin/sh", "-c", f"echo {i}"])
    START_CALL["engine"].append(time.perf_counter() - began)
    while True:
        _ENGINE.poll(1.0)
        for done_pid, _status, out, _err, _flags in _ENGINE.take_finished():
            if done_pid == pid:
                return bytes(out)


def _posix_spawn(i: int) -> bytes:
    read_end, write_end = os.pipe()
    try:
        began = time.perf_counter()
        pid = os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", "-c", f"echo {i}"],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 1)],
            setsid=True,
        )
        START_CALL["posix_spawn"].append(time.perf_counter() - began)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as out:
        data = out.read()
    os.waitpid(pid, 0)
    return data


def _popen(i: int) -> bytes:
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f"echo {i}"], stdout=subprocess.PIPE, start_new_session=True
    )
    data, _ = proc.communicate()
    return data


def _popen_fork(i: int) -> bytes:
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f"echo {i}"],
        stdout=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: None,  # forces fork instead of vfork: the cost we avoid
    )
    data, _ = proc.communicate()
    return data


STARTERS: dict[str, Starter] = {
    "engine": _engine,
    "posix_spawn": _posix_spawn,
    "popen": _popen,
    "popen-fork": _popen_fork,
}


def _grow_heap(megabytes: int) -> list[tuple[int, str]]:
    """Many small objects, as a real application holds (about 100 bytes each)."""
    return [(i, str(i)) for i in range(megabytes * 1024 * 1024 // 100)]


def _run(start: Starter, n: int) -> list[int]:
    """Start n tasks one after another; the indexes whose output was not exactly theirs."""
    return [i for i in range(n) if start(i) != b"%d\n" % i]


def _meta(args: argparse.Namespace, heap_objects: int) -> dict[str, Any]:
    """The machine and checkout the figures are from."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bin_sh": os.path.realpath("/bin/sh"),
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "argv": sys.argv,
        "args": vars(args),
        "heap_objects": heap_objects,
        "rss_mb": rss_bytes() / MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="starts per method per round")
    parser.add_argument("-r", type=int, default=5, help="interleaved rounds")
    parser.add_argument("-m", type=int, default=0, help="heap to grow first, in MB")
    parser.add_argument("--json", metavar="PATH", help="save the raw figures here")
    args = parser.parse_args()
    heap = _grow_heap(args.m)
    meta = _meta(args, len(heap))
    times: dict[str, list[float]] = {name: [] for name in STARTERS}
    for _ in range(args.r):
        for name, start in STARTERS.items():
            began = time.perf_counter()
            wrong = _run(start, args.n)
            elapsed = time.perf_counter() - began
            if wrong:
                sys.exit(f"{name}: {len(wrong)} starts gave the wrong output (first: {wrong[:5]})")
            times[name].append(elapsed / args.n * 1e6)
    best = min(statistics.median(v) for v in times.values())
    print(f"heap {args.m} MB ({len(heap)} objects), {args.n} starts x {args.r} rounds")
    print(f"{'method':<12} {'median us/start':>16} {'min':>8} {'ratio':>7}")
    summary: dict[str, dict[str, float]] = {}
    for name, values in times.items():
        median = statistics.median(values)
        summary[name] = {"median_us": median, "min_us": min(values), "ratio": median / best}
        print(f"{name:<12} {median:>16.0f} {min(values):>8.0f} {median / best:>7.2f}")
    print("the start call alone (the spawner held: its work and the wait for exec), us:")
    for name, values in START_CALL.items():
        if values:
            cut = sorted(values)
            median, p90 = statistics.median(cut) * 1e6, cut[len(cut) * 9 // 10] * 1e6
            summary[name]["start_call_median_us"] = median
            summary[name]["start_call_p90_us"] = p90
            print(f"{name:<12} median {median:8.0f}   p90 {p90:8.0f}")
    if args.json:
        data = {"meta": meta, "us_per_start": times, "summary": summary}
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()

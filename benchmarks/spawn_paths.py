"""Which way should the runner start a task?  Time each candidate, side by side.

The runner starts every task itself, so the cost of one start is its main per-task cost.
Candidates, each starting ``/bin/sh -c 'echo i'`` with stdout on a pipe, reading the
output and reaping the child, one after another so that only the start path differs:

- ``posix_spawn``: ``os.posix_spawn`` with file actions and ``setsid`` (the runner's way);
- ``popen``: ``subprocess.Popen`` with ``start_new_session=True`` (CPython's vfork path);
- ``popen-fork``: the same with a no-op ``preexec_fn``, which forces a real fork.

Rounds are interleaved so that machine drift hits every method alike.  ``-m`` grows the
process's heap first, to show which paths pay for the spawner's size.

    python benchmarks/spawn_paths.py -n 500 -r 5 -m 0
    python benchmarks/spawn_paths.py -n 200 -r 3 -m 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

Starter = Callable[[int], bytes]


def _posix_spawn(i: int) -> bytes:
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", "-c", f"echo {i}"],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 1)],
            setsid=True,
        )
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
    "posix_spawn": _posix_spawn,
    "popen": _popen,
    "popen-fork": _popen_fork,
}


def _grow_heap(megabytes: int) -> list[tuple[int, str]]:
    """Many small objects, as a real application holds (about 100 bytes each)."""
    return [(i, str(i)) for i in range(megabytes * 1024 * 1024 // 100)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="starts per method per round")
    parser.add_argument("-r", type=int, default=5, help="interleaved rounds")
    parser.add_argument("-m", type=int, default=0, help="heap to grow first, in MB")
    args = parser.parse_args()
    heap = _grow_heap(args.m)
    times: dict[str, list[float]] = {name: [] for name in STARTERS}
    for _ in range(args.r):
        for name, start in STARTERS.items():
            began = time.perf_counter()
            total = sum(int(start(i)) for i in range(args.n))
            elapsed = time.perf_counter() - began
            if total != args.n * (args.n - 1) // 2:
                sys.exit(f"{name}: wrong sum of outputs {total}")
            times[name].append(elapsed / args.n * 1e6)
    best = min(statistics.median(v) for v in times.values())
    print(f"heap {args.m} MB ({len(heap)} objects), {args.n} starts x {args.r} rounds")
    print(f"{'method':<12} {'median us/start':>16} {'min':>8} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<12} {median:>16.0f} {min(values):>8.0f} {median / best:>7.2f}")


if __name__ == "__main__":
    main()

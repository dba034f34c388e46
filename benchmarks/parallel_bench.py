"""``leanpool parallel`` against GNU parallel and ``xargs -P``, side by side.

Workloads (each method runs each workload once per repeat, methods interleaved, so
the ratios are paired within a repeat):

- ``echo``: N jobs ``echo {}`` over the numbers 1..N;
- ``checksum``: ``sha256sum`` of each of M small files (``-0`` input from a file list);
- ``tag``: ``--tag -k`` over 40 jobs printing 1 MB each (GNU parallel and leanpool
  only: xargs has no tags).

Each run's wall time (tasks/s) and the time from its start to the first byte of output.
rust-parallel is used when ``rust-parallel`` is on PATH (it is not in the registries
this machine reaches).

Usage::

    python benchmarks/parallel_bench.py --repeats 5 --json benchmarks/results/parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import git  # benchmarks/harness.py, beside this file

LEANPOOL = [sys.executable, "-m", "leanpool", "parallel"]


def timed(argv: list[str], stdin: bytes | None) -> tuple[float, float, int]:
    """(wall seconds, seconds to the first byte of output, bytes of output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    feeder = None
    if stdin is not None:
        # From a thread: xargs stops reading its input while its jobs wait on a full
        # output pipe, so writing it all before reading would deadlock.
        pipe = proc.stdin
        assert pipe is not None

        def feed() -> None:
            with pipe:
                pipe.write(stdin)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    first = proc.stdout.read(1)
    first_at = time.perf_counter() - start
    size = len(first) + len(proc.stdout.read())
    proc.wait()
    if feeder is not None:
        feeder.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {proc.returncode}")
    return time.perf_counter() - start, first_at, size


def workloads(
    n: int, files: list[str], jobs: int
) -> dict[str, dict[str, tuple[list[str], bytes | None]]]:
    numbers = "".join(f"{i}\n" for i in range(1, n + 1)).encode()
    listing = b"".join(f.encode() + b"\0" for f in files)
    out: dict[str, dict[str, tuple[list[str], bytes | None]]] = {
        "echo": {
            "leanpool": ([*LEANPOOL, "-j", str(jobs), "echo", "{}"], numbers),
            "xargs": (["xargs", "-P", str(jobs), "-n", "1", "echo"], numbers),
        },
        "checksum": {
            "leanpool": ([*LEANPOOL, "-0", "-j", str(jobs), "sha256sum", "{}"], listing),
            "xargs": (["xargs", "-0", "-P", str(jobs), "-n", "1", "sha256sum"], listing),
        },
        "tag": {
            "leanpool": (
                [*LEANPOOL, "--tag", "-k", "-j", str(jobs), "yes {} | head -c 1000000"],
                "".join(f"job{i}\n" for i in range(40)).encode(),
            ),
        },
    }
    gnu = shutil.which("parallel")
    if gnu:
        out["echo"]["gnu-parallel"] = ([gnu, "--will-cite", "-j", str(jobs), "echo", "{}"], numbers)
        out["checksum"]["gnu-parallel"] = (
            [gnu, "--will-cite", "-0", "-j", str(jobs), "sha256sum", "{}"],
            listing,
        )
        out["tag"]["gnu-parallel"] = (
            [gnu, "--will-cite", "--tag", "-k", "-j", str(jobs), "yes {} | head -c 1000000"],
            out["tag"]["leanpool"][1],
        )
    rust = shutil.which("rust-parallel")
    if rust:
        out["echo"]["rust-parallel"] = ([rust, "-j", str(jobs), "echo"], numbers)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-n", type=int, default=2000, help="echo jobs")
    parser.add_argument("--files", type=int, default=5000, help="files to checksum")
    parser.add_argument("-j", "--jobs", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        files = []
        for i in range(args.files):
            path = os.path.join(scratch, f"f{i}")
            with open(path, "wb") as f:
                f.write(os.urandom(512))
            files.append(path)
        plan = workloads(args.n, files, args.jobs)
        rows: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            for workload, methods in plan.items():
                order = list(methods)
                if repeat % 2:
                    order.reverse()
                for method in order:
                    argv, stdin = methods[method]
                    wall, first, size = timed(argv, stdin)
                    rows.append(
                        {
                            "repeat": repeat,
                            "workload": workload,
                            "method": method,
                            "wall_s": wall,
                            "first_s": first,
                            "bytes": size,
                        }
                    )
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    counts = {"echo": args.n, "checksum": args.files, "tag": 40}
    report = {
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "uname": " ".join(platform.uname()),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "commit": git("rev-parse", "--short", "HEAD") or "",
            "gnu_parallel": _version("parallel"),
        },
        "jobs": args.jobs,
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    print(table(rows, counts))


def _version(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        return "not installed"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "?"


def table(rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    """Markdown: tasks/s best and median, paired ratios to leanpool, first output."""
    lines = [
        "| workload | method | tasks/s best | tasks/s median "
        "| its time / leanpool's (median of paired) | first output median ms |",
        "|---|---|---|---|---|---|",
    ]
    for workload in counts:
        methods = sorted({r["method"] for r in rows if r["workload"] == workload})
        for method in methods:
            mine = [r for r in rows if r["workload"] == workload and r["method"] == method]
            rates = [counts[workload] / r["wall_s"] for r in mine]
            ratios = []
            for r in mine:
                ours = next(
                    x
                    for x in rows
                    if x["workload"] == workload
                    and x["method"] == "leanpool"
                    and x["repeat"] == r["repeat"]
                )
                ratios.append(r["wall_s"] / ours["wall_s"])
            lines.append(
                f"| {workload} | {method} | {max(rates):,.0f} | {statistics.median(rates):,.0f} "
                f"| {statistics.median(ratios):.2f} x "
                f"| {1000 * statistics.median(r['first_s'] for r in mine):.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

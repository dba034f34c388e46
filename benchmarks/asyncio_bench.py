"""asyncio benchmarks: event-loop latency during a run, arun() against run(), cancel time.

Three measurements, each method side by side in one process and interleaved over the
repeats (the machine is noisy; ratios are paired per repeat):

1. Event-loop latency: a heartbeat coroutine sleeps 1 ms in a loop during a run of
   ``--tasks`` ``echo i`` tasks at ``-j 8``; the gaps between its beats, worst and 99th
   percentile, for ``arun()``, for ``await asyncio.to_thread(run_tasks, ...)``, and for a
   plain ``for r in runner.run()`` inside the coroutine (it blocks the loop).
2. Throughput: ``arun()`` against ``run()`` on echo tasks and on ``sleep 0.01`` tasks.
3. Cancel: the time from ``task.cancel()`` on a task iterating ``arun()`` (8 running
   ``sleep 60`` tasks, each with a child) to every one of those processes gone.

Usage::

    python benchmarks/asyncio_bench.py --repeats 5 --json benchmarks/results/asyncio.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import git  # benchmarks/harness.py, beside this file

import leanpool


def _gaps_during(run: Any) -> tuple[list[float], float]:
    """Run the coroutine function ``run`` with a 1 ms heartbeat; return its gaps (s)
    and the run's wall time."""

    async def main() -> tuple[list[float], float]:
        gaps: list[float] = []

        async def beat() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        heart = asyncio.create_task(beat())
        await asyncio.sleep(0.01)
        gaps.clear()
        start = time.perf_counter()
        await run()
        took = time.perf_counter() - start
        heart.cancel()
        return gaps, took

    return asyncio.run(main())


def _echo_runner(n: int) -> leanpool.TaskRunner:
    runner = leanpool.TaskRunner(8)
    for i in range(n):
        runner.add(i, f"echo {i}")
    return runner


def latency(n: int) -> dict[str, dict[str, float]]:
    async def with_arun() -> None:
        count = 0
        async for _ in _echo_runner(n).arun():
            count += 1
        assert count == n

    async def with_thread() -> None:
        results = await asyncio.to_thread(
            leanpool.run_tasks, [f"echo {i}" for i in range(n)], parallel=8
        )
        assert len(results) == n

    async def with_plain_run() -> None:
        assert len(list(_echo_runner(n).run())) == n

    out = {}
    for name, run in (
        ("arun()", with_arun),
        ("to_thread(run_tasks)", with_thread),
        ("run() in the loop", with_plain_run),
    ):
        gaps, took = _gaps_during(run)
        gaps.sort()
        out[name] = {
            "worst_ms": 1000 * (gaps[-1] if gaps else took),
            "p99_ms": 1000 * (gaps[int(len(gaps) * 0.99)] if gaps else took),
            "median_ms": 1000 * (statistics.median(gaps) if gaps else took),
            "beats": len(gaps),
            "run_s": took,
        }
    return out


def throughput(n: int, cmd: str, *, async_first: bool = False) -> dict[str, float]:
    """Tasks per second of run() and arun() on the same tasks, run back to back (in
    either order: the repeats alternate it)."""

    def build() -> leanpool.TaskRunner:
        runner = leanpool.TaskRunner(8)
        for i in range(n):
            runner.add(i, cmd.format(i=i))
        return runner

    def sync_rate() -> float:
        start = time.perf_counter()
        assert len(list(build().run())) == n
        return n / (time.perf_counter() - start)

    async def main() -> int:
        return len([r async for r in build().arun()])

    def async_rate() -> float:
        start = time.perf_counter()
        assert asyncio.run(main()) == n
        return n / (time.perf_counter() - start)

    if async_first:
        asynchronous = async_rate()
        sync = sync_rate()
    else:
        sync = sync_rate()
        asynchronous = async_rate()
    return {"run()": sync, "arun()": asynchronous, "ratio": asynchronous / sync}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def cancel_time() -> float:
    """Seconds from task.cancel() to every task process (and child) gone."""
    with tempfile.TemporaryDirectory() as pid_dir:

        def pids() -> list[int]:
            return [int(p) for f in Path(pid_dir).glob("*.pid") for p in f.read_text().split()]

        async def main() -> float:
            runner = leanpool.TaskRunner(8)
            for i in range(8):
                runner.add(i, f"sleep 60 & echo $$ $! > {pid_dir}/{i}.pid; wait")

            async def consume() -> None:
                async for _ in runner.arun():
                    pass

            task = asyncio.ensure_future(consume())
            while len(pids()) < 16:
                await asyncio.sleep(0.005)
            watched = pids()
            start = time.perf_counter()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            while any(_alive(pid) for pid in watched):
                await asyncio.sleep(0.001)
            return time.perf_counter() - start

        return asyncio.run(main())


def machine() -> dict[str, str]:
    commit = git("rev-parse", "--short", "HEAD") or ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "uname": " ".join(platform.uname()),
        "cpus": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        one: dict[str, Any] = {
            "latency": latency(args.tasks),
            "echo": throughput(args.tasks, "echo {i}", async_first=repeat % 2 == 1),
            "sleep": throughput(args.tasks // 4, "sleep 0.01", async_first=repeat % 2 == 1),
            "cancel_s": cancel_time(),
        }
        rounds.append(one)
        lat = one["latency"]
        print(
            f"repeat {repeat + 1}: worst gap arun {lat['arun()']['worst_ms']:.1f} ms, "
            f"to_thread {lat['to_thread(run_tasks)']['worst_ms']:.1f} ms, "
            f"plain run {lat['run() in the loop']['worst_ms']:.0f} ms; "
            f"arun/run echo {one['echo']['ratio']:.3f}, sleep {one['sleep']['ratio']:.3f}; "
            f"cancel {one['cancel_s'] * 1000:.0f} ms",
            flush=True,
        )
    report = {"machine": machine(), "tasks": args.tasks, "rounds": rounds}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(summarize(rounds), indent=1))


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Best and median over the repeats of each number."""

    def both(values: list[float], best: str) -> dict[str, float]:
        pick = min if best == "min" else max
        return {"best": pick(values), "median": statistics.median(values)}

    out: dict[str, Any] = {"latency": {}}
    for name in rounds[0]["latency"]:
        out["latency"][name] = {
            key: both([r["latency"][name][key] for r in rounds], "min")
            for key in ("worst_ms", "p99_ms")
        }
    for kind in ("echo", "sleep"):
        out[kind] = {
            key: both([r[kind][key] for r in rounds], "max") for key in ("run()", "arun()", "ratio")
        }
    out["cancel_ms"] = both([1000 * r["cancel_s"] for r in rounds], "min")
    return out


if __name__ == "__main__":
    main()

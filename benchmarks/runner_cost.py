"""What one task costs the runner itself, against what it costs the C ceiling's driver.

Runs, in turn within each repeat (A B C A B C ...), on ``-n`` tasks ``echo i`` at ``-p``
in flight:

- ``engine``: the lean runner (started as ``TaskRunner`` starts it) on its C engine;
- ``python``: the same runner on its pure-Python path (``LEANPOOL_PURE_PYTHON=1``);
- ``ceiling``: ``benchmarks/ceiling.c``, the least a pool must do for the same work (two
  pipes, a start in a new session, both pipes drained, reaped, each output forwarded);

and reports per task each driver's own user and system CPU time (read from its
zombie's ``/proc/PID/stat`` before it is reaped: its children, the tasks, are not in
it) and the tasks per second.  CPU time per task is the figure to optimise: it is what
the driver takes away from the tasks on a busy machine, it bounds one driver's rate
whatever the number of cores, and it is far less noisy than wall-clock rates.  Each
repeat is a pair (runner, ceiling), so the target, the runner's CPU per task at most
the ceiling's system time + 15 µs, is read from paired differences.

    python benchmarks/runner_cost.py -n 2000 -p 8 -r 5
    python benchmarks/runner_cost.py --src /path/to/other/checkout/src   # another version
    python benchmarks/runner_cost.py --json out.json

``--src`` measures another tree's runner; its engine is compiled into that tree first
when it has the source and no build (``srcpath.build_engine``).  Ticks are 10 ms: use
at least 2,000 tasks a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness import CLK_TCK, build_ceiling, stat_ticks, wait_unreaped  # beside this file
from srcpath import build_engine, use_source_dir  # benchmarks/srcpath.py, beside this file

SOURCE_DIR = use_source_dir(sys.argv)

from leanpool._caller.options import make_options  # noqa: E402  # after --src is taken
from leanpool._caller.process import runner_command  # noqa: E402

if TYPE_CHECKING:
    from leanpool._protocol.config import RunnerConfig

METHODS = ("engine", "python", "ceiling")


def _runner_argv(package_dir: str, tasks: str, parallel: int) -> list[str]:
    config: RunnerConfig = {
        "options": make_options(parallel=parallel),
        "input": {"path": tasks, "format": "jsonl", "stream": False},
        "ordered": False,
        "cleanup_dir": None,
        "cluster": None,
        "spill_dir": None,
        "halt_rule": None,
        "slot_env": None,
        "workers": {
            "executable": sys.executable,
            "path": sys.path,
            "main_path": None,
            "main_module": None,
            "preload": [],
            "report_rss": False,
        },
    }
    argv = runner_command(config)
    argv[-2] = package_dir  # the runner of the tree under test
    return argv


def _zombie_cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of an exited, unreaped child, its own children excluded."""
    wait_unreaped(pid)
    ticks = stat_ticks(f"/proc/{pid}/stat")
    assert ticks is not None, "an unreaped child keeps its /proc entry"
    return ticks[0] / CLK_TCK, ticks[1] / CLK_TCK


def _count_ceiling_records(stream: bytes, n: int) -> int:
    """The ceiling's records ("INDEX STATUS OUT ERR\\n" + payloads), each checked."""
    pos = count = 0
    while pos < len(stream):
        end = stream.index(b"\n", pos)
        index, status, out, err = map(int, stream[pos:end].split())
        payload = stream[end + 1 : end + 1 + out]
        if status != 0 or payload != f"{index}\n".encode() or err != 0 or not 0 <= index < n:
            sys.exit(f"ceiling: wrong record for task {index}")
        pos = end + 1 + out + err
        count += 1
    return count


def one_run(
    method: str, package_dir: str, files: dict[str, str], n: int, p: int
) -> dict[str, float]:
    """One driver run: its tasks/s and its own CPU per task (µs)."""
    env = dict(os.environ)
    env.pop("LEANPOOL_PURE_PYTHON", None)
    if method == "python":
        env["LEANPOOL_PURE_PYTHON"] = "1"
    if method == "ceiling":
        argv = [files["ceiling"], str(p)]
        stdin = open(files["lines"], "rb")  # noqa: SIM115  # closed below
    else:
        argv = _runner_argv(package_dir, files["jsonl"], p)
        stdin = subprocess.PIPE  # type: ignore[assignment]  # the control channel, held open
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    if method == "ceiling":
        results = _count_ceiling_records(proc.stdout.read(), n)
    else:
        results = 0
        engine = None
        for line in proc.stdout:
            if line.startswith(b'{"id":'):
                results += 1
            elif line.startswith(b'{"leanpool":"start"'):
                engine = json.loads(line).get("engine", "python")
        want = "c" if method == "engine" else "python"
        if engine != want:
            sys.exit(f"{method}: the runner took its {engine} path, not {want}")
    proc.stdout.close()
    if method == "ceiling":
        stdin.close()
    else:
        assert proc.stdin is not None
        proc.stdin.close()
    user_s, sys_s = _zombie_cpu(proc.pid)
    elapsed = time.perf_counter() - began
    proc.wait()
    if results != n or proc.returncode != 0:
        sys.exit(f"{method}: {results} results of {n}, exit {proc.returncode}")
    return {
        "tps": n / elapsed,
        "user_us": user_s / n * 1e6,
        "sys_us": sys_s / n * 1e6,
        "cpu_us": (user_s + sys_s) / n * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks per run")
    parser.add_argument("-p", type=int, help="tasks in flight (echo 8, sleep 16)")
    parser.add_argument(
        "--workload",
        choices=("echo", "sleep"),
        default="echo",
        help="echo i, or sleep 0.00X && echo i (X from 1 to 10, seeded, as bench.py)",
    )
    parser.add_argument("-r", type=int, default=5, help="repeats (each runs every method)")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ",".join(METHODS)
    )
    parser.add_argument("--src", help="the src/ directory whose leanpool is measured")
    parser.add_argument("--json", help="write every run here")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if args.p is None:
        args.p = 16 if args.workload == "sleep" else 8
    if set(methods) - set(METHODS):
        parser.error(f"unknown methods: {sorted(set(methods) - set(METHODS))}")
    import leanpool

    package_dir = os.path.dirname(os.path.abspath(leanpool.__file__))
    if "engine" in methods and not build_engine(package_dir):
        sys.exit(f"no C engine in {package_dir}, and none could be built there")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"jsonl": os.path.join(tmp, "tasks.jsonl"), "lines": os.path.join(tmp, "tasks.txt")}
        with open(files["jsonl"], "w") as jsonl, open(files["lines"], "w") as lines:
            rng = random.Random(1)
            for i in range(args.n):
                cmd = f"echo {i}"
                if args.workload == "sleep":
                    cmd = f"sleep 0.{rng.randint(1, 10):03d} && {cmd}"
                jsonl.write(json.dumps({"id": i, "cmd": cmd}) + "\n")
                lines.write(cmd + "\n")
        if "ceiling" in methods:
            ceiling = build_ceiling()
            if ceiling is None:
                sys.exit("no C compiler (cc or gcc) to build benchmarks/ceiling.c")
            files["ceiling"] = ceiling
        for _ in range(args.r):
            for method in methods:
                runs[method].append(one_run(method, package_dir, files, args.n, args.p))
    print(f"{package_dir}: {args.n} x {args.workload} at -p {args.p}, {args.r} repeats, in turn")
    python = platform.python_version()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {platform.release()}, Python {python}")
    print(f"  {'method':8} {'tasks/s':>8} {'user us':>8} {'sys us':>8} {'cpu us':>8}   (medians)")
    for method in methods:
        med = {k: statistics.median(r[k] for r in runs[method]) for k in runs[method][0]}
        cells = " ".join(f"{med[k]:8.1f}" for k in ("user_us", "sys_us", "cpu_us"))
        print(f"  {method:8} {med['tps']:8.0f} {cells}")
    if "ceiling" in methods:
        for method in (m for m in methods if m != "ceiling"):
            over = [
                r["cpu_us"] - c["sys_us"]
                for r, c in zip(runs[method], runs["ceiling"], strict=True)
            ]
            rate = [r["tps"] / c["tps"] for r, c in zip(runs[method], runs["ceiling"], strict=True)]
            print(
                f"  {method}: CPU per task beyond the ceiling's system time, paired: median "
                f"{statistics.median(over):.1f} us (min {min(over):.1f}, max {max(over):.1f}); "
                f"rate vs ceiling: median {statistics.median(rate):.2f} (best {max(rate):.2f})"
            )
    if args.json:
        meta = {
            "n": args.n,
            "p": args.p,
            "workload": args.workload,
            "repeats": args.r,
            "src": package_dir,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} CPUs, {platform.release()}",
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()

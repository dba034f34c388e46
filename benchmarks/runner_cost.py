"""What one task costs the runner itself: its own CPU time per task, and the rate.

Runs the lean runner directly (as ``TaskRunner`` starts it) on ``-n`` tasks ``echo i``
at ``-p`` in flight, ``-r`` times, and reports per task the runner's user and system
CPU time (from ``wait4``'s rusage of the runner alone, children excluded) and the tasks
per second.  CPU time per task is the figure to optimise: it is what the runner takes
away from the tasks on a busy machine, and it is far less noisy than wall-clock rates.

    python benchmarks/runner_cost.py -n 2000 -p 8 -r 5
    python benchmarks/runner_cost.py --src /path/to/other/checkout/src   # compare versions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from leanpool._caller.options import make_options
from leanpool._caller.process import runner_command

if TYPE_CHECKING:
    from leanpool._protocol.config import RunnerConfig


def _one_run(package_dir: str, tasks: str, n: int, parallel: int) -> tuple[float, float, float]:
    """(tasks/s, user us/task, sys us/task) of one runner run."""
    config: RunnerConfig = {
        "options": make_options(parallel=parallel),
        "input": {"path": tasks, "format": "jsonl", "stream": False},
        "ordered": False,
        "cleanup_dir": None,
        "cluster": None,
        "spill_dir": None,
        "halt_rule": None,
        "slot_env": None,
        # Protocol 2 with calls needs it; older runners ignore it.
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
    argv[-2] = package_dir  # the runner of the checkout under test
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    results = sum(1 for line in proc.stdout if line.startswith(b'{"id":'))
    proc.stdout.close()
    assert proc.stdin is not None
    proc.stdin.close()
    # Wait without reaping, and read the zombie's own CPU times: wait4's rusage would add
    # those of the tasks it reaped.
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    elapsed = time.perf_counter() - began
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    user_s, sys_s = int(fields[11]) / ticks, int(fields[12]) / ticks
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if results != n or proc.returncode != 0:
        sys.exit(f"runner gave {results} results of {n}, exit {proc.returncode}")
    return n / elapsed, user_s / n * 1e6, sys_s / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks per run")
    parser.add_argument("-p", type=int, default=8, help="tasks in flight")
    parser.add_argument("-r", type=int, default=5, help="runs")
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = parser.parse_args()
    package_dir = os.path.join(args.src, "leanpool")
    with tempfile.TemporaryDirectory() as tmp:
        tasks = os.path.join(tmp, "tasks.jsonl")
        with open(tasks, "w") as f:
            for i in range(args.n):
                f.write(json.dumps({"id": i, "cmd": f"echo {i}"}) + "\n")
        runs = [_one_run(package_dir, tasks, args.n, args.p) for _ in range(args.r)]
    tps, user, system = (statistics.median(column) for column in zip(*runs, strict=True))
    print(f"{args.src}: {args.n} x echo at -p {args.p}, median of {args.r}")
    print(f"  tasks/s {tps:8.0f}   runner CPU per task: user {user:5.0f} us, sys {system:5.0f} us")


if __name__ == "__main__":
    main()

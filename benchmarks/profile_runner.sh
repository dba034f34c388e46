#!/bin/sh
# Profiles the leanpool runner alone, on N `echo i` tasks: its system calls (strace -c,
# the runner process only: no -f, so the tasks it spawns are not counted) and its
# instructions (valgrind --tool=callgrind, the runner only: children are not traced).
# It does so at two task counts, N1 and N2, so the per-task cost is the slope between
# them: the interpreter's start-up and the imports cancel out. That is how the
# "instructions per task" and "syscalls per task" figures in docs/benchmarks.md are
# made. All raw outputs are written to OUTDIR.
#
# Usage:  benchmarks/profile_runner.sh OUTDIR [SRC]
#   OUTDIR  created if missing; gets the raw outputs (see the list at the end)
#   SRC     the src/ directory whose leanpool is profiled (default: this checkout's
#           src/). To pin a commit:  git archive COMMIT src | tar -x -C DIR  then DIR/src
# Environment: N1=500 N2=1000 (task counts), P=8 (tasks in flight),
#              METHOD=engine or python (the runner's C engine, or its pure-Python path;
#              for runner_cost.py of the C engine's commit and later),
#              PYTHON (default: the checkout's .venv/bin/python),
#              RUNNER_COST (default: benchmarks/runner_cost.py next to this script; for
#              an older SRC, the runner_cost.py of the same commit, which knows how
#              that runner starts: git archive COMMIT src benchmarks | tar -x -C DIR)
#
# Under valgrind the kernel's pidfd_open is missing (ENOSYS), so the runner profiled by
# callgrind learns of exits through SIGCHLD; strace sees the pidfd path.
#
# Needs: a POSIX sh, that Python, and git. Also strace (for the syscall counts) and
# valgrind with callgrind_annotate (for the instruction counts). If one is missing, it
# is skipped with a note. On Debian/Ubuntu: apt-get install -y strace valgrind
#
# How the runner is started: exactly as benchmarks/runner_cost.py starts it. This script
# runs runner_cost.py's own entry point, main(), for one run (-n N -p P -r 1 --src SRC),
# with PYTHONPATH=SRC so that the caller side comes from SRC too. subprocess.Popen is
# wrapped so that the profiler's command goes in front of the first command it starts
# with this Python interpreter, which is the runner.
# ASSUMPTIONS (runner_cost.py has no entry point that returns the runner's command):
# runner_cost.py's main() reads -n, -p, -r and --src from sys.argv. It starts the
# runner with subprocess.Popen (or something built on it) of an argv list whose first
# element is sys.executable, and it starts nothing else with that interpreter first.
# If runner_cost.py changes this, change the Python driver below (drive()). The
# script stops with an error if no runner was started this way.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: benchmarks/profile_runner.sh OUTDIR [SRC]}
src=$(cd "${2:-$here/../src}" && pwd)
n1=${N1:-500}
n2=${N2:-1000}
p=${P:-8}
python=${PYTHON:-$here/../.venv/bin/python}
runner_cost=${RUNNER_COST:-$here/runner_cost.py}
mkdir -p "$out"
out=$(cd "$out" && pwd)
PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH

# drive N PROFILER_ARGV...: one runner_cost.py run of N tasks, with the runner under the
# profiler; runner_cost.py's report goes to stdout, the runner's argv to stderr.
drive() {
    n=$1
    shift
    "$python" - "$runner_cost" "$n" "$p" "$src" "$@" <<'EOF'
import importlib.util
import os
import subprocess
import sys

path, n, p, src, *profiler = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # its helpers beside it
spec = importlib.util.spec_from_file_location("runner_cost", path)
assert spec is not None and spec.loader is not None
runner_cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner_cost)
started = []


class Profiled(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        if not started and isinstance(args, (list, tuple)) and list(args[:1]) == [sys.executable]:
            args = [*profiler, *args]
            started.append(args)
        super().__init__(args, *rest, **kwargs)


subprocess.Popen = Profiled
sys.argv = [path, "-n", n, "-p", p, "-r", "1", "--src", src]
method = os.environ.get("METHOD")
if method:  # runner_cost.py since the C engine: the engine, the pure-Python runner, the ceiling
    sys.argv += ["--methods", method]
runner_cost.main()
if not started:
    sys.exit("profile_runner.sh: runner_cost.py started no runner with this Python "
             "(see the assumptions at the top of the script)")
print("runner argv (profiler first):", started[0], file=sys.stderr)
EOF
}

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "command: $0 $*  (N1=$n1 N2=$n2 P=$p)"
    echo "machine: $(nproc) CPUs, $(uname -sr)"
    echo "python: $("$python" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
    echo "src: $src"
    echo "runner_cost.py: $runner_cost (sha256 $(sha256sum < "$runner_cost" | cut -d' ' -f1))"
    echo "leanpool source sha256 (bench.py --source-hash): $("$python" "$here/bench.py" --source-hash "$src/leanpool")"
    echo "checkout HEAD (not necessarily the code profiled): $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "strace: $(strace -V 2>/dev/null | head -n 1 || true)"
    echo "valgrind: $(valgrind --version 2>/dev/null || true)"
} > "$out/meta.txt"
cat "$out/meta.txt"

tools=""
if command -v strace > /dev/null 2>&1; then
    tools="$tools strace"
else
    echo "note: strace not found: no syscall counts (apt-get install -y strace)" >&2
fi
if command -v valgrind > /dev/null 2>&1; then
    tools="$tools callgrind"
else
    echo "note: valgrind not found: no instruction counts (apt-get install -y valgrind)" >&2
fi

for n in "$n1" "$n2"; do
    for tool in $tools; do
        echo "== $tool, $n tasks" >&2
        log=$out/driver-$tool-$n.log
        case $tool in
        strace) set -- strace -c -o "$out/strace-$n.txt" ;;
        callgrind) set -- valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.$n" ;;
        esac
        if ! drive "$n" "$@" > "$out/runner_cost-$tool-$n.txt" 2> "$log"; then
            echo "profile_runner.sh: the $tool run of $n tasks failed; the end of $log:" >&2
            tail -n 15 "$log" >&2
            exit 1
        fi
        cat "$out/runner_cost-$tool-$n.txt" >&2
        if [ "$tool" = callgrind ] && command -v callgrind_annotate > /dev/null 2>&1; then
            callgrind_annotate "$out/callgrind.out.$n" > "$out/callgrind-$n.txt"
        fi
    done
done

# The slopes: per task = (count at N2 - count at N1) / (N2 - N1).
"$python" - "$out" "$n1" "$n2" <<'EOF' | tee "$out/summary.txt"
import os
import sys

out, n1, n2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def syscalls(path):
    calls = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) in (5, 6) and fields[-1] != "total" and fields[3].isdigit():
                calls[fields[-1]] = int(fields[3])
    return calls


def instructions(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"no summary line in {path}")


span = n2 - n1
print(f"per task = (count at {n2} tasks - count at {n1} tasks) / {span}")
a, b = (os.path.join(out, f"callgrind.out.{n}") for n in (n1, n2))
if os.path.exists(a) and os.path.exists(b):
    ir1, ir2 = instructions(a), instructions(b)
    print(f"instructions (callgrind Ir): {ir1:,} and {ir2:,}: {(ir2 - ir1) / span:,.0f} per task")
a, b = (os.path.join(out, f"strace-{n}.txt") for n in (n1, n2))
if os.path.exists(a) and os.path.exists(b):
    c1, c2 = syscalls(a), syscalls(b)
    per = {name: (c2.get(name, 0) - c1.get(name, 0)) / span for name in c1.keys() | c2.keys()}
    print(f"syscalls (strace -c): {sum(per.values()):.1f} per task")
    for name, k in sorted(per.items(), key=lambda item: -item[1]):
        if abs(k) >= 0.005:
            print(f"  {name:<16} {k:6.2f}")
EOF
echo "raw outputs in $out: meta.txt, strace-N.txt (strace -c), callgrind.out.N and" \
    "callgrind-N.txt (callgrind_annotate), runner_cost-TOOL-N.txt (runner_cost.py's" \
    "report of that run: rates and CPU times under a profiler, not figures to quote)," \
    "driver-TOOL-N.log (the runner's argv), summary.txt (the per-task slopes)" >&2

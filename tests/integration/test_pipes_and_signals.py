"""A command's pipes and signals, end to end: what the runner keeps, and how a task starts.

Every test here runs on the C engine and on the pure-Python path (``conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from leanpool import Result, TaskRunner
from tests.helpers import PY, alive, cannot_fault

# -- a pipe's last bytes -----------------------------------------------------------------

_OUT = b"".join(b"o%07d\n" % i for i in range(37_500))  # 337,500 bytes: five 64 KiB reads
_ERR = b"".join(b"e%07d\n" % i for i in range(25_000))  # 225,000 bytes

_CANNOT_ENLARGE = 77
"""The task's exit status when this machine does not let it grow its pipes to 1 MiB
(``/proc/sys/fs/pipe-max-size`` lowered, or the user's pipe quota spent)."""

WRITES_INTO_ENLARGED_PIPES_UNREAD = """
import fcntl, os, signal, sys, time
pidfile, cannot_enlarge = sys.argv[1], int(sys.argv[2])
for fd in (1, 2):
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError as exc:
        print("cannot grow the pipe to 1 MiB:", exc, file=sys.stderr)
        sys.exit(cannot_enlarge)
out = b"".join(b"o%07d\\n" % i for i in range(37_500))
err = b"".join(b"e%07d\\n" % i for i in range(25_000))
# Run past the 50 ms after which the runner watches a task's exit (its pidfd), then
# say who we are and stop the runner until we are gone.
time.sleep(0.3)
runner = os.getppid()
with open(pidfile + ".part", "w") as f:
    f.write(f"{os.getpid()} {runner}")
os.rename(pidfile + ".part", pidfile)
def stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"
os.kill(runner, signal.SIGSTOP)
deadline = time.monotonic() + 20
while not stopped(runner):
    if time.monotonic() > deadline:
        sys.exit("the runner did not stop")
    time.sleep(0.001)
# The pipes hold 1 MiB each: these do not block, and no one reads them until we exit.
assert os.write(1, out) == len(out)
assert os.write(2, err) == len(err)
os._exit(0)
"""


@contextlib.contextmanager
def _runner_continued_once_task_exits(pidfile: Path) -> Iterator[list[str]]:
    """A thread that waits for the task to write "PID RUNNER_PID" to pidfile, then until
    the task has exited (a zombie: its stopped runner cannot reap it), then SIGCONTs the
    runner.  Whatever happens, the runner is continued before the block is left.  The
    list it gives holds what went wrong in the thread, if anything."""
    problems: list[str] = []
    runner_pid: list[int] = []
    done = threading.Event()

    def watch() -> None:
        # Deadlines: a Python start and the task's 0.3 s take well under a second; 30 s
        # leaves room for a machine loaded by other test runs.
        deadline = time.monotonic() + 30
        while not pidfile.exists():
            if time.monotonic() > deadline or done.is_set():
                problems.append("the task never wrote its pid file")
                return
            time.sleep(0.005)
        task, runner = (int(word) for word in pidfile.read_text().split())
        runner_pid.append(runner)
        # Its writes are non-blocking, so it exits at once; 10 s is room for load.
        deadline = time.monotonic() + 10
        while alive(task):
            if time.monotonic() > deadline:
                problems.append("the task did not exit while its runner was stopped")
                break
            time.sleep(0.005)
        os.kill(runner, signal.SIGCONT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield problems
    finally:
        done.set()
        thread.join(timeout=45)
        for pid in runner_pid:  # never leave a stopped runner behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_every_byte_an_enlarged_pipe_holds_at_its_writers_exit_is_kept(
    tmp_path: Path, exit_watch: str
) -> None:
    """A task may grow its own pipes past 64 KiB (F_SETPIPE_SZ: 1 MiB), fill them
    without blocking and exit at once.  The runner must then read more than a 64 KiB
    buffer's worth after the hang-up, or after it learned of the exit (pidfd or
    SIGCHLD), and keep all of it, on stdout and stderr.

    The task stops its runner (SIGSTOP) before it writes, and the test continues it
    once the task is gone: the runner then finds the hang-ups and the exit at once with
    everything still unread, as a runner kept off the CPU on a busy machine does.
    """
    pidfile = tmp_path / "pids"
    runner = TaskRunner(1)
    task = [PY, "-c", WRITES_INTO_ENLARGED_PIPES_UNREAD, str(pidfile), str(_CANNOT_ENLARGE)]
    runner.add("fills", task)
    with _runner_continued_once_task_exits(pidfile) as problems:
        (result,) = runner.run()
    if result.status == _CANNOT_ENLARGE:
        cannot_fault(result.stderr.strip())
    assert result.status == 0, result.stderr[-500:]
    assert not problems, problems
    # Lengths first: a short output says how much was lost, without megabytes of diff.
    assert (len(result.stdout_bytes), len(result.stderr_bytes)) == (len(_OUT), len(_ERR))
    assert result.stdout_bytes == _OUT
    assert result.stderr_bytes == _ERR
    assert (result.stdout_truncated, result.stderr_truncated) == (False, False)


# -- max_output's edge ---------------------------------------------------------------------


def _writes(out: int, err: int) -> list[str]:
    """A command writing out bytes to stdout and err bytes to stderr, in one write each."""
    code = (
        "import os, sys\n"
        "out, err = int(sys.argv[1]), int(sys.argv[2])\n"
        "assert os.write(1, b'o' * out) == out\n"
        "assert os.write(2, b'e' * err) == err\n"
    )
    return [PY, "-c", code, str(out), str(err)]


@pytest.mark.parametrize(
    "cap",
    [1000, 150_000],  # one read of the pipe; past the first 64 KiB read, in a later one
)
def test_an_output_of_exactly_max_output_bytes_is_whole_and_one_more_is_cut(cap: int) -> None:
    """max_output keeps at most that many bytes of each stream, and the result says when
    it dropped some (``Result.stdout_truncated``/``stderr_truncated``; the record's
    fields of the same names): exactly ``cap`` bytes is all of the output, not a cut
    one, and each stream's flag speaks for that stream alone."""
    runner = TaskRunner(4, max_output=cap)
    runner.add("exact", _writes(cap, cap))
    runner.add("out+1", _writes(cap + 1, cap))
    runner.add("err+1", _writes(cap, cap + 1))
    runner.add("both+1", _writes(cap + 1, cap + 1))
    results: dict[str | int, Result] = {r.id: r for r in runner.run()}
    seen = {
        task_id: (
            r.status,
            r.ok,
            r.stdout_bytes == b"o" * cap,
            r.stderr_bytes == b"e" * cap,
            r.stdout_truncated,
            r.stderr_truncated,
        )
        for task_id, r in results.items()
    }
    # A cut output is still a success, with its first cap bytes.
    assert seen == {
        "exact": (0, True, True, True, False, False),
        "out+1": (0, True, True, True, True, False),
        "err+1": (0, True, True, True, False, True),
        "both+1": (0, True, True, True, True, True),
    }


# -- how a task starts: signal dispositions ------------------------------------------------

_NOT_IGNORED_IN_TASKS = (signal.SIGPIPE, signal.SIGXFSZ)
"""Python ignores these at start-up (the caller and the runner both are Python): a task
must get them back at their default action (``yes | head`` ends, a file past
RLIMIT_FSIZE kills its writer), as subprocess's restore_signals does."""


def _signal_masks(status_text: str) -> dict[str, int]:
    masks = {}
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        if name in ("SigBlk", "SigIgn", "SigCgt"):
            masks[name] = int(value, 16)
    return masks


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


def _names(mask: int) -> set[str]:
    """The signals of a mask by name (numbers for those Python has no name for)."""
    names = set()
    for sig in range(1, signal.NSIG):
        if mask & _bit(sig):
            try:
                names.add(signal.Signals(sig).name)
            except ValueError:  # a real-time signal
                names.add(str(sig))
    return names


def test_a_task_starts_with_default_signal_actions_but_what_its_caller_ignores(
    exit_watch: str,
) -> None:
    """A task's dispositions are those a program started from the caller would get:

    - SIGPIPE and SIGXFSZ at their default action, though the caller and the runner,
      both Python, ignore them;
    - the signals the runner handles (SIGINT, SIGTERM; SIGCHLD on the SIGCHLD
      exit-watch path) at their default action, not ignored;
    - no signal blocked;
    - a signal the caller ignores (here SIGHUP, as under nohup) still ignored: the
      runner leaves it so, as across any exec.

    ``cat`` reads them from /proc/self/status; it installs no handler of its own.
    """
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with open("/proc/self/status") as f:
            caller = _signal_masks(f.read())
        runner = TaskRunner(1)
        runner.add("masks", ["cat", "/proc/self/status"])
        (result,) = runner.run()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert result.ok, result
    task = _signal_masks(result.stdout)
    reset = sum(_bit(sig) for sig in _NOT_IGNORED_IN_TASKS)
    # glibc's own signals (32 and 33, below SIGRTMIN) are no one's to set: glibc 2.36's
    # posix_spawn (the pure-Python path) leaves them ignored in the child, and
    # sigaddset refuses them, so no setsigdef can undo it.  They are not compared.
    ours = sum(_bit(sig) for sig in signal.valid_signals() if 0 < sig < signal.NSIG)
    task["SigIgn"] &= ours
    expected_ignored = caller["SigIgn"] & ~reset & ours
    # By name first, to say which signal differs.  With SIGINT and SIGTERM handled by
    # the runner (and SIGCHLD on the SIGCHLD path), equality also says they are not
    # ignored in the task unless the caller ignores them (a suite started in the
    # background of a shell does ignore SIGINT).
    assert _names(task["SigIgn"]) == _names(expected_ignored)
    assert task["SigIgn"] == expected_ignored
    assert _bit(signal.SIGHUP) & task["SigIgn"]
    assert task["SigCgt"] == 0, _names(task["SigCgt"])
    assert task["SigBlk"] == 0, _names(task["SigBlk"])

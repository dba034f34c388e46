"""Module-level functions the call tests send to workers (a worker imports them by name)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

KEPT: list[bytes] = []
"""What ``grow`` keeps alive in its worker, so that the worker's RSS stays up."""


class Unpicklable:
    """Its instances refuse pickling: a bound method of one cannot be sent."""

    def __reduce__(self) -> str:
        raise TypeError("Unpicklable objects do not pickle")

    def method(self) -> int:
        return 1


class CustomError(Exception):
    """An exception type of the caller's own, rebuilt on the caller's side."""


def square(x: int) -> int:
    return x * x


def echo(*args: object, **kwargs: object) -> object:
    return [list(args), kwargs]


def pid() -> int:
    return os.getpid()


def parent_cmdline() -> str:
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def talk(tag: str) -> str:
    """Writes through every layer a call may use: Python's streams (buffered, never
    flushed here), the raw descriptors, and C stdio (buffered, never flushed here)."""
    print(f"py-out {tag}")
    print(f"py-err {tag}", file=sys.stderr)
    os.write(1, f"fd-out {tag}\n".encode())
    libc = ctypes.CDLL(None)
    libc.printf(b"c-out %s\n", tag.encode())
    return tag


def raise_custom(message: str) -> None:
    raise CustomError(message)


def raise_value(message: str) -> None:
    def inner() -> None:
        raise ValueError(message)

    inner()


def segfault() -> None:
    ctypes.string_at(0)


def exit_now(status: int) -> None:
    os._exit(status)


def kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)


def sleep_with_child(seconds: float, pid_file: str) -> None:
    """Starts a child process (in the worker's group) and records both pids."""
    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(seconds)


def ignore_term_and_sleep(seconds: float, pid_file: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)


def grow(megabytes: int) -> int:
    KEPT.append(b"x" * (megabytes << 20))
    return os.getpid()


def fail_first(counter: str) -> int:
    """Fails on its first try, succeeds on the next (the counter file says which)."""
    path = Path(counter)
    tries = int(path.read_text()) if path.exists() else 0
    path.write_text(str(tries + 1))
    if tries == 0:
        raise RuntimeError("first try fails")
    return tries + 1


def big(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


def not_json() -> object:
    return {1, 2, 3}


def unpicklable_value() -> object:
    return Unpicklable()


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def ignore_term_with_child(marker: str, pid_file: str) -> None:
    """Ignores SIGTERM itself; its child notes the SIGTERM it gets in marker."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(
        ["sh", "-c", f"trap 'touch {marker}; exit 0' TERM; sleep 30 & wait"],
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    )
    Path(pid_file).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(30)


def leave_child(pid_file: str) -> None:
    """Starts a child that outlives the call, and returns."""
    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(child.pid))


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def garble_reply_pipe() -> None:
    """Writes on the worker's reply descriptor, which a call must never do."""
    os.write(4, b"not json\n")


def nap_and_mark(seconds: float, marks: str, tag: int) -> int:
    """Notes in marks that it started, naps, then notes that it ran to its end."""
    Path(marks, f"started-{tag}").touch()
    time.sleep(seconds)
    Path(marks, f"done-{tag}").touch()
    return tag


def print_then_die(pid_file: str, go_file: str, size: int, how: str) -> None:
    """Once go_file exists, writes size bytes to stdout and a line to stderr, then dies
    (``os._exit(7)``, or SIGKILL of itself as the OOM killer would) at once.

    Its stdout pipe is made big enough to hold all of it first, so that it never waits
    for the runner to read: it dies with most of its output still in the pipe.
    """
    import fcntl  # here: this file's head is shared, only appended to

    fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 1 << 20)
    Path(f"{pid_file}.part").write_text(str(os.getpid()))
    os.replace(f"{pid_file}.part", pid_file)  # whole once it exists: the test waits on it
    deadline = time.monotonic() + 30  # a bound, should the test never say go
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.005)
    view = memoryview(printed_before_death(size))
    while view:
        view = view[os.write(1, view) :]
    os.write(2, b"about to die\n")
    if how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(7)


def printed_before_death(size: int) -> bytes:
    """What ``print_then_die`` writes to stdout."""
    return b"0123456789abcdef" * (size // 16)


def crash_leaving_child(pid_file: str) -> None:
    """Starts a child (in the worker's group), records both pids, then SIGKILLs its own
    worker, as the OOM killer would: no cleanup of its own runs."""
    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(f"{os.getpid()} {child.pid}")
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for_file(path: str, within: float) -> bool:
    """Returns once path exists (True), or after within seconds (False)."""
    deadline = time.monotonic() + within
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def call_sys_exit(code: int) -> None:
    sys.exit(code)

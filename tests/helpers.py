"""What the tests share: named misbehaving tasks, process probes and waits with deadlines.

No fixture lives here (see ``conftest.py``); everything is plain functions and constants,
imported by name.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

PY = sys.executable

# Named misbehaving tasks (shell snippets) used across the tests.
IGNORES_TERM = "trap '' TERM; sleep 30"
FORKS_GRANDCHILD = "sleep 30 & echo $!; wait"
FLOODS_STDOUT = "head -c 5000000 /dev/zero"
PRINTS_OPEN_FDS = (
    "import os\n"
    "fds = []\n"
    "for fd in range(1024):\n"
    "    try:\n"
    "        os.fstat(fd)\n"
    "    except OSError:\n"
    "        continue\n"
    "    fds.append(fd)\n"
    "print(fds)\n"
)


def alive(pid: int) -> bool:
    """True while pid names a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: list[int], within: float) -> float:
    """Poll until none of pids is alive; return how long it took, or fail the test."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if not any(alive(pid) for pid in pids):
            return time.monotonic() - start
        time.sleep(0.01)
    left = [pid for pid in pids if alive(pid)]
    raise AssertionError(f"still alive after {within} s: {left}")


def wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll predicate under a deadline."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def leanpool_cli(
    *args: str, stdin: bytes | None = None, timeout: float = 60, cwd: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m leanpool ARGS`` as a real subprocess."""
    return subprocess.run(
        [PY, "-m", "leanpool", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
    )


def holders_of(path: Path) -> list[int]:
    """Pids of the processes that have path open (e.g. the runner writing a journal)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [fd.readlink() for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if path in links:
            found.append(int(proc.name))
    return found


def runner_pids() -> list[int]:
    """Pids of live leanpool runner (or cluster driver) processes that are children of this
    test process."""
    me = str(os.getpid())
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        runs = b"leanpool._runner" in cmdline or b"leanpool._cluster.driver" in cmdline
        if fields[1] == me and runs and fields[0] != "Z":
            found.append(int(name))
    return found


def cannot_fault(reason: str) -> NoReturn:
    """A fault test cannot set its fault up here: skip it, but never silently in CI.

    A skipped fault test is a guarantee nobody checks, so with CI=true it fails instead.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(f"a fault test cannot run in CI, so its guarantee goes unchecked: {reason}")
    pytest.skip(reason)


def load_engine() -> ModuleType:
    """The runner's C engine, imported directly (whatever ``LEANPOOL_PURE_PYTHON`` says).

    ``pip install`` builds it wherever a C compiler is found, so missing is a failure,
    except on a machine with no compiler (then the runner uses Python, and these tests
    have nothing to look at); never a skip in CI.
    """
    try:
        return importlib.import_module("leanpool._runner._engine")
    except ImportError as exc:
        if os.environ.get("CI") == "true" or shutil.which("cc") or shutil.which("gcc"):
            pytest.fail(f"the C engine was not built, though a C compiler is here: {exc}")
        pytest.skip("no C compiler here: the engine is not built, the runner uses Python")


SESSION_ENV = "LEANPOOL_TEST_SESSION"
"""Set for the whole test session (conftest): every process the tests start inherits it,
so that the leak check sees this suite's task processes and no one else's."""


def run_marked_pids() -> list[int]:
    """Live processes (not zombies) of this test session that carry a leanpool run's mark
    in their environment: a runner, a task, or anything a task started."""
    session = f"{SESSION_ENV}={os.environ.get(SESSION_ENV, '')}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not alive(int(name)):
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        variables = environ.split(b"\0")
        if session in variables and any(v.startswith(b"LEANPOOL_RUN=") for v in variables):
            found.append(int(name))
    return found

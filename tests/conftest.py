"""Shared fixtures: every test runs with a private TMPDIR and is checked for leaks."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SESSION_ENV, run_marked_pids, runner_pids, wait_for

os.environ.setdefault(SESSION_ENV, f"{os.getpid()}-{time.time_ns()}")


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A TMPDIR of the test's own, proved empty afterwards: no spool is left behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp
    wait_for(lambda: not list(tmp.iterdir()), 3.0, "the spool directory to be removed")


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """No descriptor, runner, task process or unreaped child outlives a test."""
    fds = set(os.listdir("/proc/self/fd"))
    yield
    wait_for(lambda: not runner_pids(), 3.0, "runner processes to exit")
    # Runners and every task process carry LEANPOOL_RUN: none may outlive its test.
    wait_for(lambda: not run_marked_pids(), 3.0, "task processes to be gone")
    leaked = set(os.listdir("/proc/self/fd")) - fds
    # A listdir of /proc/self/fd opens one descriptor of its own; check what it points to.
    real = [fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not real, f"test leaked descriptors: {real}"
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        info = None
    assert info is None, f"test left an unreaped child: pid {info.si_pid}"


@pytest.fixture(params=["pidfd", "sigchld"])
def exit_watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with both ways the runner learns of exits (our own switch, not a mock)."""
    if request.param == "sigchld":
        monkeypatch.setenv("LEANPOOL_NO_PIDFD", "1")
    return str(request.param)

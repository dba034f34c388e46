"""group_has_live_member: how the runner tells a leftover group of its own run (which gets
its SIGKILL after the grace) from an unrelated group that got the same id."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def test_a_member_caught_in_its_exec_still_shows_the_run_mark() -> None:
    """Straight after Popen, a child may still be inside its exec, its environment not
    laid out yet (/proc reads empty): group_has_live_member must still find the mark.
    Many starts beside two busy loops, so that some are caught in that moment: without
    the re-read this failed about one run in eight on 2 cores (a stress test, not a
    proof).  And a member whose environment is empty for good carries no mark, found
    out in a bounded time."""
    from leanpool._runner.reaping import group_has_live_member

    env = {**os.environ, "LEANPOOL_RUN": "ours"}
    hogs = [  # busy cores make the moment longer (without the re-read: 1 miss in ~300)
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)
    ]
    try:
        for _ in range(300):
            with subprocess.Popen(["sleep", "30"], start_new_session=True, env=env) as member:
                try:
                    assert group_has_live_member(member.pid, b"LEANPOOL_RUN=ours")
                finally:
                    member.kill()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    with subprocess.Popen(["sleep", "30"], start_new_session=True, env={}) as bare:
        try:
            _wait_for_exec(bare.pid)
            began = time.monotonic()
            assert not group_has_live_member(bare.pid, b"LEANPOOL_RUN=ours")
            # 0.02-0.03 s loaded (a /proc scan and 10 ms of re-reads); a re-read that waited
            # for an environment that never comes would not end.
            assert time.monotonic() - began < 2
        finally:
            bare.kill()


def _wait_for_exec(pid: int) -> None:
    """Until the child's exec is done (its name is sleep)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/comm", "rb") as f:
            if f.read().strip() == b"sleep":
                return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} never became sleep")

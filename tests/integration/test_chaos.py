"""Chaos: a few thousand tasks while tasks, runners and callers are killed at random.

Each round resumes the run from its journal; the test ends when a round finishes the
batch, and the journal must then hold every task id exactly once, each a whole record.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import PY, holders_of, wait_for

TASKS = 2000


def children_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(name))
    return found


@pytest.mark.timeout(240)
def test_chaos_resume_until_done_records_every_id_once(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    tasks = tmp_path / "tasks.jsonl"
    with tasks.open("w") as f:
        for i in range(TASKS):
            # 12.5 s of work at -j 8: more than the 12 faulty rounds can get done.
            cmd = f"sleep 0.05; echo {i}"
            f.write(json.dumps({"id": i, "cmd": cmd}) + "\n")
    journal = tmp_path / "journal.jsonl"
    faults: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + 200
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        cli = subprocess.Popen(
            [
                PY,
                "-m",
                "leanpool",
                "run",
                str(tasks),
                "-j",
                "8",
                "--journal",
                str(journal),
                "--resume",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if rounds <= 12:  # then let a round finish the batch
            inject_faults(cli, rng, faults)
        _, err = cli.communicate(timeout=60)
        assert b"Traceback" not in err, err.decode()
        # A killed caller's runner notices and stops on its own; wait for it to let go.
        wait_for(lambda: not holders_of(journal), 5, "orphaned runners to let go of the journal")
        if journal.exists() and journal.read_bytes().count(b"\n") == TASKS:
            break
    else:
        pytest.fail(f"the batch did not finish in {rounds} rounds")
    ids = [json.loads(line)["id"] for line in journal.read_bytes().splitlines()]
    counts = collections.Counter(ids)
    assert sorted(counts) == list(range(TASKS))
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1]
    print(f"{rounds} rounds, faults injected: {dict(faults)} ({sum(faults.values())} in all)")
    assert faults["caller SIGKILL"] + faults["runner SIGKILL"] >= 10


def inject_faults(
    cli: subprocess.Popen[bytes], rng: random.Random, faults: collections.Counter[str]
) -> None:
    """Kill a few tasks' groups at random moments, then the caller or its runner."""
    wait_for(lambda: cli.poll() is not None or bool(children_of(cli.pid)), 10, "a runner")
    for _ in range(rng.randint(0, 3)):
        time.sleep(rng.uniform(0.05, 0.2))
        for runner in children_of(cli.pid):
            victims = children_of(runner)
            for pid in rng.sample(victims, min(3, len(victims))):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-pid, signal.SIGKILL)  # the task's whole group
                    faults["task SIGKILL"] += 1
    time.sleep(rng.uniform(0.05, 0.3))
    if rng.random() < 0.5:
        if cli.poll() is None:
            cli.kill()
            faults["caller SIGKILL"] += 1
        return
    for runner in children_of(cli.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(runner, signal.SIGKILL)
            faults["runner SIGKILL"] += 1

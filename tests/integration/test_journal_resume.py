"""Journal and resume: every finished result is kept, every task ends up recorded once."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from leanpool import JournalError, LeanpoolError, Result, TaskFileError, TaskRunner
from tests.helpers import PY, cannot_fault, holders_of, leanpool_cli, runner_pids, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator


def write_tasks(path: Path, tasks: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def journal_ids(path: Path) -> list[str | int]:
    return [json.loads(line)["id"] for line in path.read_bytes().splitlines()]


def test_journal_holds_exactly_what_was_printed(tmp_path: Path) -> None:
    """Each journal record is the printed record plus ``task``, its line's digest."""
    tasks = write_tasks(
        tmp_path / "t.jsonl", [{"id": i, "cmd": f"echo {i}; exit {i % 2}"} for i in range(20)]
    )
    journal = tmp_path / "journal.jsonl"
    proc = leanpool_cli("run", str(tasks), "--journal", str(journal))
    assert proc.returncode == 1
    recorded = [json.loads(line) for line in journal.read_bytes().splitlines()]
    digests = {record.pop("task") for record in recorded}
    assert len(digests) == 20  # one per task line
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    key = lambda record: record["id"]  # noqa: E731
    assert sorted(printed, key=key) == sorted(recorded, key=key)


def test_resume_after_the_caller_is_killed(tmp_path: Path) -> None:
    tasks = write_tasks(
        tmp_path / "t.jsonl", [{"id": f"t{i}", "cmd": f"sleep 0.05; echo {i}"} for i in range(60)]
    )
    journal = tmp_path / "journal.jsonl"
    cli = subprocess.Popen(
        [PY, "-m", "leanpool", "run", str(tasks), "-j", "4", "--journal", str(journal)],
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: journal.exists() and journal.read_bytes().count(b"\n") >= 10, 20, "10 results")
    cli.send_signal(signal.SIGKILL)
    cli.wait(timeout=10)
    wait_for(lambda: not holders_of(journal), 3, "the orphaned runner to stop")
    first = journal_ids(journal)  # every line a whole record
    assert 10 <= len(first) < 60

    proc = leanpool_cli("run", str(tasks), "-j", "4", "--journal", str(journal), "--resume")
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line)["id"] for line in proc.stdout.splitlines()]
    assert not set(printed) & set(first), "old results must not be printed again"
    final = journal_ids(journal)
    assert sorted(final) == sorted(f"t{i}" for i in range(60))  # each id exactly once


def test_torn_last_line_is_rerun(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", [{"id": i, "cmd": f"echo {i}"} for i in range(3)])
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b'{"id":0,"status":0,"ok":true,"stdout":"0\\n"}\n{"id":1,"status":0,"o')
    proc = leanpool_cli("run", str(tasks), "--journal", str(journal), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(line)["id"] for line in proc.stdout.splitlines()) == [1, 2]
    assert sorted(journal_ids(journal)) == [0, 1, 2]


def test_api_resume_skips_and_reports(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    runner = TaskRunner(2, journal=journal)
    runner.add("a", "echo a")
    assert [r.id for r in runner.run()] == ["a"]
    resumed = TaskRunner(2, journal=journal, resume=True)
    resumed.add("a", "echo a")
    resumed.add("b", "echo b")
    calls: list[tuple[object, int, int]] = []
    summary = resumed.run_and_wait(lambda r, done, total: calls.append((r.id, done, total)))
    assert calls == [("b", 1, 1)]  # total: the tasks this run has to run
    assert (summary.total, summary.skipped, summary.completed) == (2, 1, 1)


def test_duplicate_ids_are_refused_when_a_journal_is_kept(tmp_path: Path) -> None:
    tasks = write_tasks(
        tmp_path / "t.jsonl",
        [{"id": 1, "cmd": "true"}, {"id": 2, "cmd": "true"}, {"id": 1, "cmd": "true"}],
    )
    without = leanpool_cli("run", str(tasks))
    assert without.returncode == 0  # without a journal, ids are the caller's business
    assert len(without.stdout.splitlines()) == 3
    proc = leanpool_cli("run", str(tasks), "--journal", str(tmp_path / "j.jsonl"))
    assert proc.returncode == 2
    assert b"invalid task on line 3: id 1 was already used on line 1" in proc.stderr
    assert proc.stdout == b""


def test_existing_journal_without_resume_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"id": 1}\n')
    runner = TaskRunner(2, journal=journal)
    runner.add(1, "true")
    with pytest.raises(JournalError, match="already holds results"):
        list(runner.run())
    assert journal.read_text() == '{"id": 1}\n'


# -- full disks ---------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real disk that fills up."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        cannot_fault(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_while_journaling_keeps_what_was_journaled(
    tmp_path: Path, tiny_disk: Path
) -> None:
    journal = tiny_disk / "journal.jsonl"
    runner = TaskRunner(2, journal=journal)
    for i in range(100):
        runner.add(i, "head -c 3000 /dev/zero | tr '\\0' x; sleep 0.01")
    seen: list[Result] = []
    with pytest.raises(JournalError, match="No space left on device"):
        seen.extend(runner.run())
    kept = journal_ids(journal)  # every record left in the journal is whole
    assert len(kept) == len(seen) > 5


def test_disk_full_while_spooling_is_a_clear_error(tiny_disk: Path) -> None:
    runner = TaskRunner(2, tmpdir=tiny_disk)

    def fill() -> None:
        for i in range(1000):
            runner.add(i, "cat", stdin="y" * 4096)

    with pytest.raises(LeanpoolError, match=r"cannot write the task spool .*No space left"):
        fill()
    runner.close()
    assert not list(tiny_disk.iterdir())


def test_journal_on_dev_full_fails_clearly(tmp_path: Path) -> None:
    runner = TaskRunner(2, journal="/dev/full")
    runner.add(1, "true")
    with pytest.raises(
        JournalError, match="cannot write journal /dev/full: No space left on device"
    ):
        list(runner.run())


def test_task_file_error_from_the_runner_names_the_line(tmp_path: Path) -> None:
    runner = TaskRunner(2)
    runner.add(1, "true")
    assert runner._spool is not None
    runner._spool.append({"id": 2})  # what a hand-written spool could hold
    with pytest.raises(TaskFileError) as info:
        list(runner.run())
    assert info.value.line == 2
    assert not runner_pids()


# -- resuming a batch that had failures, and a batch whose file changed ----------------


def test_resume_counts_the_journals_failures_and_resume_failed_reruns_them(
    tmp_path: Path,
) -> None:
    flag = tmp_path / "fixed"
    tasks = write_tasks(
        tmp_path / "t.jsonl",
        [
            {"id": "good", "cmd": "echo good"},
            {"id": "flaky", "cmd": f"test -e {flag} && echo fixed"},
        ],
    )
    journal = tmp_path / "journal.jsonl"
    first = leanpool_cli("run", str(tasks), "--journal", str(journal))
    assert first.returncode == 1
    again = leanpool_cli("run", str(tasks), "--journal", str(journal), "--resume")
    assert again.returncode == 1  # nothing ran, but the batch is not a success
    assert again.stdout == b""
    assert b"1 task(s) failed in an earlier run" in again.stderr
    flag.touch()
    rerun = leanpool_cli("run", str(tasks), "--journal", str(journal), "--resume-failed")
    assert rerun.returncode == 0
    assert [json.loads(line)["id"] for line in rerun.stdout.splitlines()] == ["flaky"]
    # The journal now holds the failure and the rerun's success: a resume trusts the last.
    assert sorted(map(str, journal_ids(journal))) == ["flaky", "flaky", "good"]
    final = leanpool_cli("run", str(tasks), "--journal", str(journal), "--resume")
    assert (final.returncode, final.stdout) == (0, b"")


def test_resume_refuses_a_task_file_whose_lines_moved(tmp_path: Path) -> None:
    """--lines ids are line numbers: after an edit, line 2 is another command, and a
    resume must not skip it as done."""
    marker = tmp_path / "ran"
    commands = tmp_path / "commands.txt"
    commands.write_text("echo one\necho two\n")
    journal = tmp_path / "journal.jsonl"
    assert leanpool_cli("run", "--lines", str(commands), "--journal", str(journal)).returncode == 0
    commands.write_text(f"echo zero\ntouch {marker}\necho two\n")
    proc = leanpool_cli("run", "--lines", str(commands), "--journal", str(journal), "--resume")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert not marker.exists()
    assert (
        "line 1: the journal holds a result for id 1, but of another task" in proc.stderr.decode()
    )


def test_library_resume_with_a_changed_task_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    runner = TaskRunner(2, journal=journal)
    runner.add("a", "echo 1")
    list(runner.run())
    runner = TaskRunner(2, journal=journal, resume=True)
    runner.add("a", "echo 2")
    with pytest.raises(TaskFileError, match="of another task"):
        list(runner.run())

"""Reading a journal back: torn last lines are cut, anything doubtful is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from leanpool import JournalError
from leanpool._protocol.journal import Journal

if TYPE_CHECKING:
    from pathlib import Path


def done_ids(path: Path) -> set[str | int]:
    journal = Journal(str(path), resume=True)
    journal.close()
    return set(journal.done)


def test_missing_journal_is_created_empty(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    assert done_ids(path) == set()
    assert path.exists()


def test_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id":1,"status":0}\n{"id":"b","status":0}\n{"id":3,"sta')
    assert done_ids(path) == {1, "b"}
    assert path.read_bytes() == b'{"id":1,"status":0}\n{"id":"b","status":0}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id":1}\nnot json\n{"id":2}\n', "line 2 is not a result record"),
        (b'{"id":1}\n{"id":1}\n', "line 2 repeats id 1"),
        (b'{"id":1}\n{"x":1}\n', "line 2 is not a result record"),
        (b'{"id":[1]}\n', "line 1 has an invalid id"),
    ],
)
def test_doubtful_journal_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(content)
    with pytest.raises(JournalError, match=message):
        Journal(str(path), resume=True)
    assert path.read_bytes() == content  # refused, and left untouched


def test_existing_journal_needs_resume(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id":1}\n')
    with pytest.raises(JournalError, match="already holds results"):
        Journal(str(path), resume=False)


def test_one_journal_one_run_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("leanpool._protocol.journal.JOURNAL_LOCK_WAIT_S", 0.2)
    first = Journal(str(tmp_path / "j.jsonl"), resume=True)
    try:
        with pytest.raises(JournalError, match="in use by another run"):
            Journal(str(tmp_path / "j.jsonl"), resume=True)
    finally:
        first.close()
    done_ids(tmp_path / "j.jsonl")  # free again


def test_failed_write_keeps_earlier_records() -> None:
    journal = Journal("/dev/full", resume=True)
    try:
        with pytest.raises(JournalError, match="No space left on device"):
            journal.append(b'{"id":1}\n')
    finally:
        journal.close()

"""Encoding records, and reading a runner's output back as events (the sans-I/O reader)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, strategies as st

from leanpool import ProtocolError, RunnerCrashed
from leanpool._caller.result import result_from_record
from leanpool._protocol.reader import (
    Ended,
    Fatal,
    Idle,
    RecordReader,
    ResultEvent,
    Skipped,
    Started,
)
from leanpool._protocol.records import PROTOCOL_VERSION, decode_output, encode_line

V = PROTOCOL_VERSION


def _result(task_id: object = 1, **extra: object) -> dict[str, object]:
    record = {"id": task_id, "status": 0, "ok": True, "duration": 0.5, "stdout": "", "stderr": ""}
    record.update(extra)
    return record


def _end(**extra: object) -> dict[str, object]:
    record: dict[str, object] = {
        "leanpool": "end",
        "protocol": V,
        "tasks": 1,
        "skipped": 0,
        "completed": 1,
        "failed": 0,
        "unfinished": 0,
        "halted": False,
        "interrupted": False,
        "stopped_by": None,
    }
    record.update(extra)
    return record


def _stream(*records: dict[str, object]) -> bytes:
    return b"".join(encode_line(r) for r in records)


def test_utf8_output_is_kept_as_text_only() -> None:
    assert decode_output("héllo\n".encode()) == ("héllo\n", None)


@given(st.binary(max_size=200))
def test_any_output_bytes_survive_a_round_trip(data: bytes) -> None:
    text, b64 = decode_output(data)
    record = _result(stdout=text)
    if b64 is not None:
        record["stdout_b64"] = b64
    (event,) = RecordReader().feed(encode_line(record))
    assert isinstance(event, ResultEvent)
    result = result_from_record(event.record)
    assert result.stdout_bytes == data
    assert result.stderr_bytes == b""


def test_lone_surrogate_id_still_encodes() -> None:
    line = encode_line({"id": "\ud800", "status": 0})
    assert json.loads(line)["id"] == "\ud800"
    assert b"\n" not in line[:-1]


def test_newlines_in_output_never_split_a_record() -> None:
    line = encode_line({"id": 1, "stdout": "a\nb\r\n"})
    assert line.count(b"\n") == 1


def test_reader_turns_each_record_into_its_event() -> None:
    data = _stream(
        {"leanpool": "start", "protocol": V, "total": 3, "skipped": 1},
        _result("a", stdout="x\n"),
        {"leanpool": "skipped", "protocol": V, "skipped": 2},
        {"leanpool": "idle", "protocol": V, "offset": 120},
        _end(),
    )
    reader = RecordReader()
    events = reader.feed(data)
    assert [type(e) for e in events] == [Started, ResultEvent, Skipped, Idle, Ended]
    started, result, skipped, idle, ended = events
    assert started == Started(3, 1)
    assert isinstance(result, ResultEvent)
    assert result.record["id"] == "a"
    assert result.record["stdout"] == "x\n"
    assert result.line == encode_line(_result("a", stdout="x\n"))
    assert skipped == Skipped(2)
    assert idle == Idle(120)
    assert isinstance(ended, Ended)
    assert ended.record["completed"] == 1
    assert reader.completed == 1
    reader.close()  # after the end record: a finished run


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_reader_gives_the_same_events_however_the_bytes_are_cut(cuts: list[int]) -> None:
    data = _stream(
        {"leanpool": "start", "protocol": V},
        *(_result(i, stdout="é" * i) for i in range(5)),
        _end(completed=5, tasks=5),
    )
    whole = RecordReader().feed(data)
    reader = RecordReader()
    events = []
    pos = 0
    for size in cuts:
        events += reader.feed(data[pos : pos + size])
        pos += size
    events += reader.feed(data[pos:])
    assert events == whole
    assert [e.record["id"] for e in events if isinstance(e, ResultEvent)] == [0, 1, 2, 3, 4]
    reader.close()


def test_a_stream_without_its_end_record_is_a_dead_runner() -> None:
    reader = RecordReader()
    reader.feed(_stream({"leanpool": "start", "protocol": V}, _result()))
    with pytest.raises(RunnerCrashed) as info:
        reader.close(-9, "Killed\n")
    assert info.value.returncode == -9
    assert info.value.completed == 1


def test_a_stream_cut_mid_line_is_a_dead_runner() -> None:
    reader = RecordReader()
    data = _stream({"leanpool": "start", "protocol": V}, _end())
    reader.feed(data[:-5])
    with pytest.raises(RunnerCrashed):
        reader.close(None, "")


def test_a_fatal_record_ends_the_stream() -> None:
    reader = RecordReader()
    (event,) = reader.feed(
        _stream(
            {
                "leanpool": "fatal",
                "protocol": V,
                "error": "task_file",
                "message": "m",
                "line": 4,
                "reason": "r",
            }
        )
    )
    assert isinstance(event, Fatal)
    assert (event.record["line"], event.record["reason"]) == (4, "r")
    reader.close()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not an object"),
        (b'{"leanpool": "start", "protocol": 1}\n', "protocol 1, expected 4"),
        (b'{"leanpool": "bogus", "protocol": 4}\n', "unknown record 'bogus'"),
        (b'{"leanpool": "idle", "protocol": 4}\n', "idle without an offset"),
        (b'{"id": 1, "status": "0", "ok": true, "duration": 0}\n', "bad or missing 'status'"),
        (b'{"id": true, "status": 0, "ok": true, "duration": 0}\n', "bad 'id'"),
        (b'{"status": 0, "ok": true, "duration": 0}\n', "bad or missing 'id'"),
        (b'{"id": 1, "status": 0, "ok": 1, "duration": 0}\n', "bad or missing 'ok'"),
    ],
)
def test_reader_refuses_what_is_not_a_record(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        RecordReader().feed(line)


def test_nothing_may_follow_the_last_record() -> None:
    reader = RecordReader()
    with pytest.raises(ProtocolError, match="after the last record"):
        reader.feed(_stream(_end(), _result()))


def test_half_a_line_after_the_last_record_is_a_protocol_error() -> None:
    reader = RecordReader()
    reader.feed(_stream(_end()) + b'{"id": 1, "sta')
    with pytest.raises(ProtocolError, match="after the last record"):
        reader.close(0, "")


def test_the_protocol_modules_own_summary_shows_the_current_version() -> None:
    """Its docstring is what a reader of the code sees first: it once said 3 after 4."""
    from leanpool._protocol import records

    assert records.__doc__ is not None
    shown = {int(n) for n in re.findall(r'"protocol": (\d+)', records.__doc__)}
    assert shown == {PROTOCOL_VERSION}


def test_the_reader_reads_the_same_without_jsons_undocumented_scanner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``scan_once`` is no documented API of json: where a Python lacks it, the reader
    falls back on json.loads and must read every record the same."""
    from leanpool._protocol import reader as reader_module

    lines = (
        b'{"leanpool": "start", "protocol": %d}\n' % V
        + b'{"id": "a", "status": 0, "ok": true, "duration": 0.5, "stdout": "x\\n"}\n'
        + b'{"id": 7, "status": 1, "ok": false, "duration": 1.0, "stderr": "\\u00e9"}\n'
    )
    expected = RecordReader().feed(lines)
    monkeypatch.setattr(reader_module, "_scan", reader_module._scan_with_loads)
    assert RecordReader().feed(lines) == expected
    with pytest.raises(ProtocolError, match="not JSON"):
        RecordReader().feed(b'{"id": 1,\n')

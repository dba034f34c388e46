"""The caller's fast paths for the common result give exactly what the general ones give."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
from hypothesis import given, strategies as st

from leanpool import ProtocolError
from leanpool._caller.result import Result, plain_result, result_from_record
from leanpool._protocol.reader import RecordReader, ResultEvent

ids = st.one_of(st.text(max_size=8), st.integers())
statuses = st.integers(min_value=-64, max_value=255)
durations = st.floats(allow_nan=False)
texts = st.text(max_size=20)


def _common_record(
    task_id: str | int, status: int, stdout: str, stderr: str, ok: bool, duration: float
) -> dict[str, object]:
    """The common result record: the six fields every result has."""
    return {
        "id": task_id,
        "status": status,
        "ok": ok,
        "duration": duration,
        "stdout": stdout,
        "stderr": stderr,
    }


def _fields(result: Result) -> dict[str, object]:
    """Every field, those left out of ``==`` (the raw bytes, the pickled exception) too."""
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(Result)}


@given(ids, statuses, texts, texts, st.booleans(), durations)
def test_plain_result_is_the_dataclass_result(
    task_id: str | int, status: int, stdout: str, stderr: str, ok: bool, duration: float
) -> None:
    made = Result(task_id, status, stdout, stderr, ok, duration)
    fast = plain_result(task_id, status, stdout, stderr, ok, duration)
    assert type(fast) is Result
    assert _fields(fast) == _fields(made)
    assert fast == made
    assert hash(fast) == hash(made)
    assert repr(fast) == repr(made)
    assert _fields(pickle.loads(pickle.dumps(fast))) == _fields(made)


def test_plain_result_is_frozen_like_any_result() -> None:
    result = plain_result(1, 0, "x\n", "", True, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.status = 1  # type: ignore[misc]
    assert not hasattr(result, "__dict__")


@given(ids, statuses, texts, texts, st.booleans(), durations)
def test_the_common_record_gives_what_the_general_path_gives(
    task_id: str | int, status: int, stdout: str, stderr: str, ok: bool, duration: float
) -> None:
    common = _common_record(task_id, status, stdout, stderr, ok, duration)
    # One more field, at its default, sends the same record down the general path.
    general = result_from_record({**common, "attempts": 1})  # type: ignore[typeddict-item]
    fast = result_from_record(common)  # type: ignore[arg-type]
    assert _fields(fast) == _fields(general)


def _line(record: object) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


records = st.one_of(
    st.fixed_dictionaries(
        {"id": ids, "status": statuses, "ok": st.booleans(), "duration": durations},
        optional={"stdout": texts, "stderr": texts, "attempts": st.integers()},
    ),
    st.dictionaries(  # anything else: records with missing or wrong fields
        st.sampled_from(["id", "status", "ok", "duration", "leanpool", "protocol", "offset"]),
        st.one_of(st.none(), st.booleans(), st.integers(), durations, st.text(max_size=5)),
    ),
)


def _outcome(reader: RecordReader, reads: list[bytes]) -> tuple[object, ...]:
    events: list[object] = []
    try:
        for data in reads:
            events += reader.feed(data)
    except ProtocolError as exc:
        return ("raised", events, str(exc), exc.line, exc.completed, reader.completed)
    return ("events", events, reader.completed, reader.finished)


@given(st.lists(records, max_size=6), st.data())
def test_a_read_of_one_whole_line_gives_what_the_general_path_gives(
    stream: list[object], data: st.DataObject
) -> None:
    lines = [_line(record) for record in stream]
    if data.draw(st.booleans()):
        lines.append(b"not json\n")
    # One read per line takes the one-line way; the whole stream at once takes the
    # general way (split, then each line).
    one_by_one = _outcome(RecordReader(), lines)
    at_once = _outcome(RecordReader(), [b"".join(lines)])
    if at_once[0] == "events":
        assert one_by_one == at_once
    else:  # the events before the bad line are returned by the reads before it
        assert one_by_one[0] == "raised"
        assert one_by_one[2:] == at_once[2:]


@given(ids, statuses, texts, texts, st.booleans(), durations)
def test_the_reader_makes_the_same_result_event_as_its_constructor(
    task_id: str | int, status: int, stdout: str, stderr: str, ok: bool, duration: float
) -> None:
    record = _common_record(task_id, status, stdout, stderr, ok, duration)
    line = _line(record)
    (event,) = RecordReader().feed(line)
    made = ResultEvent(json.loads(line), line)
    assert type(event) is ResultEvent
    assert event == made
    assert (event.record, event.line) == (made.record, made.line)
    assert repr(event) == repr(made)
    with pytest.raises(AttributeError):
        event.line = b""  # type: ignore[misc]

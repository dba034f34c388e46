"""The caller's fast paths for the common result give exactly what the general ones give."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given, strategies as st

from leanpool._caller.result import Result, plain_result, result_from_record

ids = st.one_of(st.text(max_size=8), st.integers())
statuses = st.integers(min_value=-64, max_value=255)
durations = st.floats(allow_nan=False)
texts = st.text(max_size=20)


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
    common = {
        "id": task_id,
        "status": status,
        "ok": ok,
        "duration": duration,
        "stdout": stdout,
        "stderr": stderr,
    }
    # One more field, at its default, sends the same record down the general path.
    general = result_from_record({**common, "attempts": 1})  # type: ignore[typeddict-item]
    fast = result_from_record(common)  # type: ignore[arg-type]
    assert _fields(fast) == _fields(general)

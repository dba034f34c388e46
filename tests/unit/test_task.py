"""The task-file reader: valid lines become tasks, anything else a TaskFileError naming the line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from leanpool import TaskFileError
from leanpool._protocol.tasks import CommandTask, parse_line, parse_text_line


def test_shell_command_runs_through_sh() -> None:
    task = parse_line(b'{"id": "a", "cmd": "echo 1"}\n', 1)
    assert isinstance(task, CommandTask)
    assert (task.id, task.argv, task.shell) == ("a", ["/bin/sh", "-c", "echo 1"], True)


def test_argv_list_runs_directly() -> None:
    task = parse_line(b'{"id": 7, "cmd": ["grep", "-c", "x"]}', 3)
    assert isinstance(task, CommandTask)
    assert (task.id, task.argv, task.shell, task.line) == (7, ["grep", "-c", "x"], False, 3)


def test_optional_fields() -> None:
    line = json.dumps(
        {
            "id": 1,
            "cmd": "wc -c",
            "stdin": "hi",
            "env": {"A": "1", "B": None},
            "cwd": "/",
            "timeout": 2,
        }
    ).encode()
    task = parse_line(line, 1)
    assert isinstance(task, CommandTask)
    assert (task.stdin, task.env, task.cwd, task.timeout) == (
        b"hi",
        {"A": "1", "B": None},
        "/",
        2.0,
    )


def test_stdin_b64_gives_exact_bytes() -> None:
    task = parse_line(b'{"id": 1, "cmd": "cat", "stdin_b64": "/w=="}', 1)
    assert isinstance(task, CommandTask)
    assert task.stdin == b"\xff"


@pytest.mark.parametrize("blank", [b"\n", b"   \n", b"", b"\t\r\n"])
def test_blank_lines_are_skipped(blank: bytes) -> None:
    assert parse_line(blank, 1) is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"id": 1}', "missing 'cmd'"),
        (b'{"cmd": "x"}', "missing 'id'"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b'{"id": 1.5, "cmd": "x"}', "'id' must be a string or an integer"),
        (b'{"id": true, "cmd": "x"}', "'id' must be a string or an integer"),
        (b'{"id": 1, "cmd": 5}', "'cmd' must be a string"),
        (b'{"id": 1, "cmd": ""}', "empty command"),
        (b'{"id": 1, "cmd": []}', "empty argv"),
        (b'{"id": 1, "cmd": ["a", 1]}', "list must hold strings only"),
        (b'{"id": 1, "cmd": "x", "timout": 3}', "unknown field 'timout'"),
        (b'{"id": 1, "cmd": "x", "timeout": -1}', "positive number"),
        (b'{"id": 1, "cmd": "x", "timeout": "3"}', "number of seconds"),
        (b'{"id": 1, "cmd": "x", "env": {"A": 1}}', "must be a string or null"),
        (b'{"id": 1, "cmd": "x", "env": {"A=B": "1"}}', "invalid variable name"),
        (b'{"id": 1, "cmd": "x", "stdin": "a", "stdin_b64": "YQ=="}', "not both"),
        (b'{"id": 1, "cmd": "x", "stdin_b64": "%%%"}', "not valid base64"),
        (b'{"id": 1, "cmd": "x", "cwd": 3}', "'cwd' must be a string"),
        (b'{"id": "\xff", "cmd": "x"}', "not valid UTF-8 (bad byte at column 9)"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_invalid_lines_name_the_line_and_reason(line: bytes, reason: str) -> None:
    with pytest.raises(TaskFileError) as info:
        parse_line(line, 42)
    assert info.value.line == 42
    assert reason in info.value.reason
    assert str(info.value).startswith("invalid task on line 42: ")


def test_text_lines_take_the_line_number_as_id() -> None:
    task = parse_text_line(b"echo hi | tr a-z A-Z\n", 5)
    assert isinstance(task, CommandTask)
    assert (task.id, task.argv) == (5, ["/bin/sh", "-c", "echo hi | tr a-z A-Z"])
    assert parse_text_line(b"  \n", 6) is None
    with pytest.raises(TaskFileError, match="line 7"):
        parse_text_line(b"echo \xff\n", 7)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_task_or_a_task_file_error(raw: bytes) -> None:
    try:
        task = parse_line(raw, 9)
    except TaskFileError as exc:
        assert exc.line == 9
        assert exc.reason
    else:
        assert task is None or isinstance(task, CommandTask)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "cmd", "env", "cwd", "stdin", "stdin_b64", "timeout", "x"]),
        json_values,
        max_size=6,
    )
)
def test_any_json_object_gives_a_task_or_a_task_file_error(record: dict[str, object]) -> None:
    raw = json.dumps(record).encode()
    try:
        task = parse_line(raw, 3)
    except TaskFileError as exc:
        assert exc.line == 3
    else:
        assert isinstance(task, CommandTask)
        assert task.id == record["id"]

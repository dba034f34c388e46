"""The task-file reader: valid lines become tasks, anything else a TaskFileError naming the line."""

from __future__ import annotations

import base64
import json
import math
import os

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
    # Bytes that are not UTF-8 (a file name) are carried exactly, as surrogate escapes.
    odd = parse_text_line(b"echo \xff\n", 7)
    assert odd is not None
    assert os.fsencode(odd.argv[2]) == b"echo \xff"


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


def _expected(record: dict[str, object]) -> tuple[object, ...] | None:
    """An independent statement of the rules: the task a record must give, or None
    when it must be refused.  Written from docs/protocol.md, not from the code."""
    fields = {"id", "cmd", "env", "cwd", "stdin", "stdin_b64", "timeout", "kill_leftovers"}
    if "cmd" not in record or "id" not in record or not set(record) <= fields:
        return None
    task_id, cmd = record["id"], record["cmd"]
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int)):
        return None
    if isinstance(cmd, str) and cmd.strip():
        argv, shell = ["/bin/sh", "-c", cmd], True
    elif isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd):
        argv, shell = cmd, False
    else:
        return None
    env = record.get("env")
    if env is not None and not (
        isinstance(env, dict)
        and all(k and "=" not in k and (v is None or isinstance(v, str)) for k, v in env.items())
    ):
        return None
    cwd = record.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        return None
    text, b64 = record.get("stdin"), record.get("stdin_b64")
    if text is not None and b64 is not None:
        return None
    stdin = None
    if text is not None:
        if not isinstance(text, str):
            return None
        stdin = text.encode()
    if b64 is not None:
        if not isinstance(b64, str):
            return None
        try:
            stdin = base64.b64decode(b64.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            return None
    timeout = record.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            return None
        if not (timeout > 0 and math.isfinite(timeout)):
            return None
        timeout = float(timeout)
    keep = record.get("kill_leftovers")
    if keep is not None and not isinstance(keep, bool):
        return None
    return (task_id, argv, shell, env, cwd or None, stdin, timeout, keep)


@settings(max_examples=600, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["id", "cmd", "env", "cwd", "stdin", "stdin_b64", "timeout", "kill_leftovers", "x"]
        ),
        json_values,
        max_size=6,
    )
)
def test_any_json_object_gives_the_task_the_rules_say_or_an_error(
    record: dict[str, object],
) -> None:
    raw = json.dumps(record).encode()
    expected = _expected(record)
    try:
        task = parse_line(raw, 3)
    except TaskFileError as exc:
        assert exc.line == 3
        assert expected is None, f"refused a valid record: {exc.reason}"
        return
    assert isinstance(task, CommandTask)
    assert expected is not None, "accepted an invalid record"
    got = (task.id, task.argv, task.shell, task.env, task.cwd, task.stdin, task.timeout)
    assert (*got, task.kill_leftovers) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"id": st.integers() | st.text(max_size=10), "cmd": st.text(min_size=1, max_size=30)},
        optional={
            "timeout": st.floats(min_value=0.001, max_value=1e6),
            "stdin_b64": st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
            "env": st.dictionaries(st.sampled_from(["A", "B_1", "PATH"]), st.text(max_size=5)),
        },
    )
)
def test_valid_records_keep_every_value(record: dict[str, object]) -> None:
    assert isinstance(record["cmd"], str)
    if not record["cmd"].strip():
        return
    task = parse_line(json.dumps(record).encode(), 1)
    assert isinstance(task, CommandTask)
    assert _expected(record) == (
        task.id,
        task.argv,
        task.shell,
        task.env,
        task.cwd,
        task.stdin,
        task.timeout,
        task.kill_leftovers,
    )

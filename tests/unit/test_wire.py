"""Encoding and decoding single protocol lines."""

from __future__ import annotations

import json

from hypothesis import given, strategies as st

from leanpool._result import result_from_line
from leanpool._wire import PROTOCOL_VERSION, control_line, decode_output, encode_line


def test_control_lines_start_with_the_leanpool_key() -> None:
    line = control_line("start", total=3, skipped=0)
    assert line.startswith(b'{"leanpool":"start"')
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == {
        "leanpool": "start",
        "protocol": PROTOCOL_VERSION,
        "total": 3,
        "skipped": 0,
    }


def test_utf8_output_is_kept_as_text_only() -> None:
    assert decode_output("héllo\n".encode()) == ("héllo\n", None)


@given(st.binary(max_size=200))
def test_any_output_bytes_survive_a_round_trip(data: bytes) -> None:
    text, b64 = decode_output(data)
    record = {"id": 1, "status": 0, "ok": True, "duration": 0.0, "stdout": text, "stderr": ""}
    if b64 is not None:
        record["stdout_b64"] = b64
    result = result_from_line(encode_line(record))
    assert result.stdout_bytes == data
    assert result.stderr_bytes == b""


def test_lone_surrogate_id_still_encodes() -> None:
    line = encode_line({"id": "\ud800", "status": 0})
    assert json.loads(line)["id"] == "\ud800"
    assert b"\n" not in line[:-1]


def test_newlines_in_output_never_split_a_record() -> None:
    line = encode_line({"id": 1, "stdout": "a\nb\r\n"})
    assert line.count(b"\n") == 1

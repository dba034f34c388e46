"""Printing a result record whose outputs came as spill files, without holding them.

The CLI prints each result as the JSON line the protocol defines, outputs inline.  A
big output arrives as a spill file (the runner's ``spill_dir``), and is streamed from
it into the printed line in chunks: the line is the same as if it had come inline, and
this process's memory does not grow with the output (a 50 MB output no longer makes a
185 MB line in memory, and more than a gigabyte of peak).
"""

from __future__ import annotations

import binascii
import codecs
import contextlib
import json
import os
from typing import IO, TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .._protocol.records import ResultRecord

__all__ = ["silence_stdout", "write_record"]

_CHUNK: Final = 3 << 18
"""Bytes read from a spill file at a time (a multiple of 3, so base64 chunks join)."""

_encode: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def write_record(out: IO[bytes], record: ResultRecord, line: bytes) -> None:
    """Write the record as one JSON line, streaming spilled outputs inline; remove the
    spill files.  A record without spill files is written as it came (``line``)."""
    fields: dict[str, object] = record  # type: ignore[assignment]  # read by name
    if "stdout_spill" not in fields and "stderr_spill" not in fields:
        out.write(line)
        return
    out.write(b"{")
    first = True
    for key, value in fields.items():
        if key.endswith("_spill"):
            continue
        if not first:
            out.write(b",")
        first = False
        spill = fields.get(f"{key}_spill")
        if isinstance(spill, str):
            _stream_output(out, key, spill)
        else:
            out.write(
                _encode(key).encode() + b":" + _encode(value).encode("utf-8", "surrogatepass")
            )
    out.write(b"}\n")


def silence_stdout(out: IO[bytes]) -> None:
    """The reader of our stdout went away (``| head``): send the rest nowhere, so that
    we stop quietly, as cat does, with no traceback from the interpreter's last flush."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


def _stream_output(out: IO[bytes], name: str, path: str) -> None:
    """``"name":"text"`` (and ``,"name_b64":"..."`` unless the bytes are UTF-8)."""
    exact = _is_utf8(path)
    out.write(_encode(name).encode() + b':"')
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            text = decoder.decode(chunk)
            out.write(_encode(text)[1:-1].encode())
        out.write(_encode(decoder.decode(b"", final=True))[1:-1].encode())
        out.write(b'"')
        if not exact:
            out.write(b',"' + name.encode() + b'_b64":"')
            f.seek(0)
            while chunk := f.read(_CHUNK):
                out.write(binascii.b2a_base64(chunk, newline=False))
            out.write(b'"')
    os.unlink(path)


def _is_utf8(path: str) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True

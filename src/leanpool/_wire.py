"""The caller-runner protocol: the shape of every line, encoded and decoded one at a time.

``docs/protocol.md`` is the written form of this module.  Standard library only: the lean
runner imports it.

Runner stdout, one JSON object per line::

    {"leanpool": "start", "protocol": 1, "total": N, "skipped": K}   once, after validation
    {"id": ..., "status": ..., "ok": ..., ...}                        one per finished task
    {"leanpool": "end", "protocol": 1, "completed": C, ...}           last line of a good run
    {"leanpool": "fatal", "protocol": 1, "error": KIND, ...}          last line of a refused run

A control record is the only kind with a ``"leanpool"`` key.  A run whose output ends
without an ``end`` or ``fatal`` record was cut short: the runner died.
"""

from __future__ import annotations

import binascii
import json
from typing import Final, Literal

__all__ = [
    "PROTOCOL_VERSION",
    "control_line",
    "decode_output",
    "encode_line",
]

PROTOCOL_VERSION: Final = 1
"""Bumped on any change a reader of version N could misread; new optional result fields
do not bump it (readers ignore fields they do not know)."""


_encode_compact: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_ascii: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def encode_line(record: object) -> bytes:
    """One record as one UTF-8 JSON line, newline included."""
    text = _encode_compact(record)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        # Only a lone surrogate (an id sent as "\ud800") gets here; \u-escape everything.
        return _encode_ascii(record).encode("ascii") + b"\n"


def control_line(kind: Literal["start", "end", "fatal"], **fields: object) -> bytes:
    """A control record, the kind of line that carries the ``"leanpool"`` key."""
    return encode_line({"leanpool": kind, "protocol": PROTOCOL_VERSION, **fields})


def decode_output(data: bytes) -> tuple[str, str | None]:
    """A task's output as (text, base64-or-None): the text is exact when it is UTF-8.

    Otherwise the text has U+FFFD where bytes were invalid, and the base64 form carries
    the exact bytes, so that nothing is lost and valid output pays nothing extra.
    """
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return (
            data.decode("utf-8", "replace"),
            binascii.b2a_base64(data, newline=False).decode("ascii"),
        )

"""The record of a command task, as ``TaskRunner.add`` writes it to the spool.

Beside ``calls`` (the record of a call): each checks its arguments against the task
kinds of ``leanpool._protocol.tasks`` before anything is written, so that a bad task
is a TypeError or ValueError at ``add()``, never a runner's error later.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Mapping, Sequence

from .._protocol.tasks import InvalidTask, task_from_record

__all__ = ["command_record"]


def command_record(
    task_id: str | int,
    cmd: object,
    *,
    stdin: str | bytes | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    kill_leftovers: bool | None = None,
) -> dict[str, object]:
    """The task record of one command (see ``TaskRunner.add`` for the arguments).

    Raises:
        TypeError, ValueError: the task is not valid.
    """
    record: dict[str, object] = {"id": task_id, "cmd": _command(cmd)}
    if stdin is not None:
        if isinstance(stdin, str):
            record["stdin"] = stdin
        elif isinstance(stdin, (bytes, bytearray, memoryview)):
            data = bytes(stdin)
            try:
                record["stdin"] = data.decode("utf-8")
            except UnicodeDecodeError:
                record["stdin_b64"] = binascii.b2a_base64(data, newline=False).decode("ascii")
        else:
            raise TypeError(f"stdin must be str or bytes, not {type(stdin).__name__}")
    if env is not None:
        record["env"] = dict(env)
    if cwd is not None:
        record["cwd"] = os.fspath(cwd)
    if timeout is not None:
        record["timeout"] = timeout
    if kill_leftovers is not None:
        record["kill_leftovers"] = kill_leftovers
    try:
        task_from_record(record, 0)
    except InvalidTask as exc:
        raise (TypeError if exc.wrong_type else ValueError)(exc.reason) from None
    return record


def _command(cmd: object) -> str | list[str]:
    """A task's cmd as the record carries it, or a TypeError that names what it got."""
    if isinstance(cmd, str):
        return cmd
    if isinstance(cmd, (bytes, bytearray, memoryview)):
        raise TypeError(f"cmd must be a string or a list of strings, not {type(cmd).__name__}")
    if isinstance(cmd, Sequence):
        parts = []
        for part in cmd:
            if isinstance(part, (bytes, bytearray)):  # exact bytes: a file name, say
                parts.append(os.fsdecode(bytes(part)))
            elif isinstance(part, (str, os.PathLike)):
                parts.append(os.fsdecode(os.fspath(part)))
            else:
                raise TypeError(
                    f"cmd as a list must hold strings or bytes only, not {type(part).__name__}"
                )
        return parts
    raise TypeError(f"cmd must be a string or a list of strings, not {type(cmd).__name__}")

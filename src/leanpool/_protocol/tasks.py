"""Task kinds: what one line of a task file may hold, and its validation.

A task record is one JSON object with an ``id`` and exactly one *kind* field that says
what to run: ``cmd`` (a shell command or an argv) or ``call`` (a Python function).
Each kind has its class here, a subclass of ``Task`` carrying the fields its children
need, and a line in ``KINDS``; the runner picks the kind of child to start from the
task's class (``leanpool._runner.children``).

Shared by the caller (``TaskRunner.add`` checks a task before spooling it) and by the
runner (which checks every line again, since a task file may come from anywhere).
Standard library only: the lean runner imports this module.
"""

from __future__ import annotations

import binascii
import json
import math
from typing import TYPE_CHECKING, ClassVar, Final

from .._errors import TaskFileError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "COMMON_FIELDS",
    "KINDS",
    "CallTask",
    "CommandTask",
    "InvalidTask",
    "Task",
    "check_function_name",
    "parse_line",
    "parse_text_line",
    "task_digest",
    "task_from_record",
]

COMMON_FIELDS: Final = ("id", "timeout", "kill_leftovers")
"""Fields every kind of task may have."""

_scan: Final[Callable[[str, int], tuple[object, int]]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # not in typeshed
"""The C scanner behind json.loads, without its two regex passes and three Python frames:
it decodes one JSON value from an index and says where it ended."""


class InvalidTask(ValueError):
    """A task record is not valid; ``wrong_type`` tells a caller to raise TypeError."""

    def __init__(self, reason: str, *, wrong_type: bool = False) -> None:
        self.reason = reason
        self.wrong_type = wrong_type
        super().__init__(reason)


class Task:
    """One validated task of any kind: what every kind shares.

    Plain slotted classes rather than dataclasses: the runner builds one per task and
    the dataclasses module is more import than it needs.  Each kind's ``__init__`` sets
    these fields itself: the runner builds two tasks per task (validation and run),
    and a ``super().__init__`` call would be a tenth of that.

    Attributes:
        id: the id its result will carry.
        line: its line number in the task file (0 for a task not read from a file).
        timeout: its own time limit, or None for the run's.
        kill_leftovers: whether processes it leaves in its group are killed when its
            main process ends; None for the run's choice.
    """

    __slots__ = ("digest", "id", "kill_leftovers", "line", "timeout")

    id: str | int
    digest: str
    """Set only with a journal: ``task_digest`` of its line (read it with getattr)."""
    line: int
    timeout: float | None
    kill_leftovers: bool | None

    kind: ClassVar[str]
    """The record field that names this kind of task."""
    fields: ClassVar[tuple[str, ...]]
    """Every field a record of this kind may have."""


class CommandTask(Task):
    """A shell command (``/bin/sh -c``) or an argv, run as its own process group."""

    __slots__ = ("argv", "cwd", "env", "shell", "stdin")

    kind = "cmd"
    fields = (*COMMON_FIELDS, "cmd", "env", "cwd", "stdin", "stdin_b64")

    def __init__(
        self,
        task_id: str | int,
        argv: list[str],
        *,
        shell: bool,
        line: int,
        env: dict[str, str | None] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        kill_leftovers: bool | None = None,
    ) -> None:
        self.id = task_id
        self.line = line
        self.timeout = timeout
        self.kill_leftovers = kill_leftovers
        self.argv = argv
        self.shell = shell
        self.env = env
        self.cwd = cwd
        self.stdin = stdin

    def __repr__(self) -> str:
        return f"<CommandTask {self.id!r} line {self.line}: {self.argv!r}>"


class CallTask(Task):
    """A Python function called in a warm worker process: ``call`` names it
    ("module:qualname"); its arguments are JSON (``args``, ``kwargs``: a task file) or
    one opaque ``pickle`` payload (base64 of ``pickle.dumps((function, args, kwargs))``:
    the library), which the runner forwards to the worker and never decodes; a big
    payload is a file of the caller's instead (``pickle_file``), so that it never
    travels through one giant line."""

    __slots__ = ("args", "function", "kwargs", "payload", "payload_file")

    kind = "call"
    fields = ("id", "timeout", "call", "args", "kwargs", "pickle", "pickle_file")

    def __init__(
        self,
        task_id: str | int,
        function: str,
        *,
        line: int,
        args: list[object] | None = None,
        kwargs: dict[str, object] | None = None,
        payload: str | None = None,
        payload_file: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.id = task_id
        self.line = line
        self.timeout = timeout
        self.kill_leftovers = None
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.payload = payload
        self.payload_file = payload_file

    def __repr__(self) -> str:
        return f"<CallTask {self.id!r} line {self.line}: {self.function}>"


def task_digest(raw: bytes) -> str:
    """What identifies a task's line for a resume: a short hash of its bytes."""
    import hashlib  # 2 ms of OpenSSL at start-up, for journal runs only

    return hashlib.blake2b(raw.rstrip(b"\r\n"), digest_size=8).hexdigest()


def _check_id(value: object) -> str | int:
    # bool is an int subclass, and a float id would not survive a JSON round trip as typed.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidTask(
            f"'id' must be a string or an integer, not {type(value).__name__}", wrong_type=True
        )
    return value


def _check_cmd(value: object) -> tuple[list[str], bool]:
    if isinstance(value, str):
        if not value or value.isspace():
            raise InvalidTask("'cmd' is an empty command")
        return ["/bin/sh", "-c", value], True
    if isinstance(value, list):
        if not value:
            raise InvalidTask("'cmd' is an empty argv list")
        for item in value:
            if not isinstance(item, str):
                raise InvalidTask(
                    f"'cmd' as a list must hold strings only, not {type(item).__name__}",
                    wrong_type=True,
                )
        return value, False
    raise InvalidTask(
        f"'cmd' must be a string (run by /bin/sh -c) or a list of strings (an argv), "
        f"not {type(value).__name__}",
        wrong_type=True,
    )


def _check_env(value: object) -> dict[str, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidTask(f"'env' must be an object, not {type(value).__name__}", wrong_type=True)
    for key, item in value.items():
        if not key or "=" in key:
            raise InvalidTask(f"'env' has an invalid variable name {key!r}")
        if item is not None and not isinstance(item, str):
            raise InvalidTask(
                f"'env' value of {key!r} must be a string or null, not {type(item).__name__}",
                wrong_type=True,
            )
    return value


def _check_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTask(
            f"'timeout' must be a number of seconds, not {type(value).__name__}", wrong_type=True
        )
    if not (value > 0 and math.isfinite(value)):
        raise InvalidTask(f"'timeout' must be a positive number of seconds, not {value!r}")
    return float(value)


def _check_stdin(record: dict[str, object]) -> bytes | None:
    text = record.get("stdin")
    b64 = record.get("stdin_b64")
    if text is not None and b64 is not None:
        raise InvalidTask("give 'stdin' or 'stdin_b64', not both")
    if text is not None:
        if not isinstance(text, str):
            raise InvalidTask(
                f"'stdin' must be a string, not {type(text).__name__}", wrong_type=True
            )
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidTask("'stdin' holds a lone surrogate; send bytes as 'stdin_b64'") from None
    if b64 is not None:
        if not isinstance(b64, str):
            raise InvalidTask(
                f"'stdin_b64' must be a base64 string, not {type(b64).__name__}", wrong_type=True
            )
        try:
            return binascii.a2b_base64(b64.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise InvalidTask(f"'stdin_b64' is not valid base64 ({exc})") from None
    return None


def _check_flag(name: str, value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidTask(
        f"'{name}' must be true or false, not {type(value).__name__}", wrong_type=True
    )


def task_from_record(record: object, line: int) -> Task:
    """Validate one decoded task record and build its Task, of the kind the record names.

    The runner calls this for every task it reads (twice for a task file: validation
    pass, run pass), so the common record, ``{"id": ..., "cmd": "..."}``, takes a short
    path with no allocation but the Task itself.

    Raises:
        InvalidTask: the record is not a valid task (the reason names the field).
    """
    if type(record) is not dict:
        raise InvalidTask(f"a task must be a JSON object, not {_json_kind(record)}")
    if len(record) != 2 or "id" not in record or "cmd" not in record:
        return _full_task(record, line)
    task_id = record["id"]
    cmd = record["cmd"]
    # type() rather than isinstance: a bool id is refused, and subclasses cannot come
    # out of json.loads anyway.
    if type(task_id) is not str and type(task_id) is not int:
        _check_id(task_id)
    if type(cmd) is str and cmd and not cmd.isspace():
        return CommandTask(task_id, ["/bin/sh", "-c", cmd], shell=True, line=line)
    argv, shell = _check_cmd(cmd)
    return CommandTask(task_id, argv, shell=shell, line=line)


def _command_task(record: dict[str, object], line: int) -> CommandTask:
    argv, shell = _check_cmd(record["cmd"])
    cwd = record.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise InvalidTask(f"'cwd' must be a string, not {type(cwd).__name__}", wrong_type=True)
    return CommandTask(
        _check_id(record["id"]),
        argv,
        shell=shell,
        line=line,
        env=_check_env(record.get("env")),
        cwd=cwd or None,
        stdin=_check_stdin(record),
        timeout=_check_timeout(record.get("timeout")),
        kill_leftovers=_check_flag("kill_leftovers", record.get("kill_leftovers")),
    )


def check_function_name(value: object) -> str:
    """A ``call`` field: "module:qualname", each part dotted identifiers.

    Raises:
        InvalidTask: it is not such a name.
    """
    if not isinstance(value, str):
        raise InvalidTask(
            f"'call' must be a string \"module:function\", not {type(value).__name__}",
            wrong_type=True,
        )
    module, colon, qualname = value.partition(":")
    if not (
        colon
        and all(part.isidentifier() for part in module.split("."))
        and all(part.isidentifier() for part in qualname.split("."))
    ):
        raise InvalidTask(f"'call' must name a function as \"module:qualname\", not {value!r}")
    return value


def _call_task(record: dict[str, object], line: int) -> CallTask:
    function = check_function_name(record["call"])
    args = record.get("args")
    kwargs = record.get("kwargs")
    payload = record.get("pickle")
    payload_file = record.get("pickle_file")
    for name, value in (("pickle", payload), ("pickle_file", payload_file)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidTask(
                f"'{name}' must be a string, not {type(value).__name__}", wrong_type=True
            )
        if args is not None or kwargs is not None:
            raise InvalidTask(f"give 'args'/'kwargs' or '{name}', not both")
    if payload is not None and payload_file is not None:
        raise InvalidTask("give 'pickle' or 'pickle_file', not both")
    assert payload is None or isinstance(payload, str)
    assert payload_file is None or isinstance(payload_file, str)
    if args is not None and not isinstance(args, list):
        raise InvalidTask(f"'args' must be an array, not {_json_kind(args)}", wrong_type=True)
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise InvalidTask(
                f"'kwargs' must be an object, not {_json_kind(kwargs)}", wrong_type=True
            )
        for key in kwargs:
            if not key.isidentifier():
                raise InvalidTask(f"'kwargs' has a key that is no argument name: {key!r}")
    return CallTask(
        _check_id(record["id"]),
        function,
        line=line,
        args=args,
        kwargs=kwargs,
        payload=payload,
        payload_file=payload_file,
        timeout=_check_timeout(record.get("timeout")),
    )


KINDS: Final[dict[str, tuple[type[Task], Callable[[dict[str, object], int], Task]]]] = {
    CommandTask.kind: (CommandTask, _command_task),
    CallTask.kind: (CallTask, _call_task),
}
"""Each kind of task: the field that names it, its class and the function that builds
one from a record whose fields are known to be its own.  A new kind is one line here
and one kind of child in the runner."""


def _full_task(record: dict[str, object], line: int) -> Task:
    kinds = [key for key in KINDS if key in record]
    if not kinds:
        if "id" not in record:
            raise InvalidTask("missing 'id'")
        raise InvalidTask(f"missing {' or '.join(repr(k) for k in KINDS)}: what to run")
    if len(kinds) > 1:
        raise InvalidTask(f"a task has one kind, not {' and '.join(map(repr, kinds))}")
    cls, build = KINDS[kinds[0]]
    for key in record:
        if key not in cls.fields:
            raise InvalidTask(
                f"unknown field {key!r} (fields of a {cls.kind!r} task are: "
                f"{', '.join(cls.fields)})"
            )
    if "id" not in record:
        raise InvalidTask("missing 'id'")
    return build(record, line)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _decode(raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskFileError(line, f"not valid UTF-8 (bad byte at column {exc.start + 1})") from None


def parse_line(raw: bytes, line: int) -> Task | None:
    """Parse one line of a JSONL task file; None for a blank line.

    Raises:
        TaskFileError: the line is not a valid task, naming the line and the reason.
    """
    text = _decode(raw, line)
    try:
        record, end = _scan(text, 0)
        if end != len(text) and not text[end:].isspace():
            raise StopIteration  # trailing data: let json.loads name it
    except (StopIteration, ValueError, RecursionError):
        if not text or text.isspace():
            return None
        record = _loads_or_explain(text, line)
    try:
        return task_from_record(record, line)
    except InvalidTask as exc:
        raise TaskFileError(line, exc.reason) from None


def _loads_or_explain(text: str, line: int) -> object:
    """json.loads, for its precise error message on a line the fast scanner refused."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFileError(line, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 5,000 digits, or [[[[...
        raise TaskFileError(line, f"not valid JSON ({exc})") from None


def parse_text_line(raw: bytes, line: int) -> CommandTask | None:
    """Parse one line of a plain command list (``--lines``): the id is the line number.

    Bytes that are not UTF-8 (a file name in another encoding) reach the command exactly:
    they are carried as surrogate escapes, which ``posix_spawn`` encodes back.
    """
    text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
    if not text or text.isspace():
        return None
    return CommandTask(line, ["/bin/sh", "-c", text], shell=True, line=line)

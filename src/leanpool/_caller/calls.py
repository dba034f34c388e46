"""The caller's side of calls: turning a function and its arguments into a task record,
and a call's value or exception back into Python objects.

From the library, arguments and values travel as pickles (the caller's own data, in
its private spool: pickle is what multiprocessing uses too); a task file's calls use
JSON.  A function is sent by reference, "module:qualname", as pickle does: a lambda, a
closure or anything else a worker could not import is refused with a TypeError at once,
when it is added, not when a worker fails to find it.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import pickle
import sys
from typing import TYPE_CHECKING, Any

from .._errors import LeanpoolError, RemoteTraceback
from .._protocol.records import SPILL_OVER
from .._protocol.tasks import InvalidTask, check_function_name, task_from_record

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .._protocol.calls import CallError, WorkerConfig

__all__ = ["call_record", "rebuild_exception", "unpickle_value", "worker_config"]


def worker_config() -> WorkerConfig:
    """This interpreter, as the workers must reproduce it: executable, ``sys.path``
    (relative entries made absolute now), and what ``__main__`` is."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    main_module = None
    if spec is not None and getattr(spec, "name", None) not in (None, "__main__"):
        main_module = spec.name  # python -m pkg.mod (or pkg.__main__ for python -m pkg)
    main_file = getattr(main, "__file__", None)
    cwd = os.getcwd()
    return {
        "executable": sys.executable or "python3",
        "path": [os.path.join(cwd, entry) for entry in sys.path],
        "main_path": None if main_file is None or main_module else os.path.abspath(main_file),
        "main_module": main_module,
        "preload": [],
        "report_rss": False,
    }


def function_name(function: object) -> str:
    """ "module:qualname" of a function object, as the record shows it."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        module, qualname = type(function).__module__, type(function).__qualname__
    name = f"{module}:{qualname}"
    try:
        return check_function_name(name)
    except InvalidTask:  # a lambda or a local function: its name is for show only
        return f"{module}:{qualname.replace('<', '_').replace('>', '_').replace('.', '_')}"


def call_record(
    task_id: str | int,
    function: Callable[..., Any] | str,
    args: Iterable[object],
    kwargs: Mapping[str, object] | None,
    timeout: float | None,
    payload_path: Callable[[], str],
) -> dict[str, object]:
    """The task record of one call, checked as the runner will check it.

    Pickled arguments of ``SPILL_OVER`` bytes or more are written to the file that
    ``payload_path()`` names (in the caller's private directory), and the record names it.

    Raises:
        TypeError: the function cannot be sent to a worker (a lambda, a closure, a
            function of an interactive ``__main__``), or an argument cannot be pickled;
            or a field has the wrong type.
        ValueError: a field has a wrong value.
    """
    args = tuple(args)
    kwargs = dict(kwargs or {})
    if isinstance(function, str):
        try:
            name = check_function_name(function)
        except InvalidTask as exc:
            raise (TypeError if exc.wrong_type else ValueError)(exc.reason) from None
        target: object = name
    elif callable(function):
        name = function_name(function)
        if getattr(function, "__module__", None) == "__main__" and not _main_importable():
            raise TypeError(
                f"cannot send {function!r} to a worker: it was defined in an interactive "
                "session; define it in a module and import it"
            )
        _check_pickles(function, f"cannot send {function!r} to a worker", _FUNCTION_HINT)
        target = function
    else:
        raise TypeError(f"a call takes a function or a 'module:function' string, not {function!r}")
    payload = _check_pickles(
        (target, args, kwargs), f"cannot send the arguments of {name} to a worker", ""
    )
    record: dict[str, object] = {"id": task_id, "call": name}
    if timeout is not None:
        record["timeout"] = timeout
    record["pickle"] = ""  # checked with a placeholder: the payload is written last
    try:
        task_from_record(record, 0)
    except InvalidTask as exc:
        raise (TypeError if exc.wrong_type else ValueError)(exc.reason) from None
    if len(payload) < SPILL_OVER:
        record["pickle"] = _b64(payload)
    else:
        del record["pickle"]
        record["pickle_file"] = _write_payload(payload_path(), payload, name)
    return record


def _write_payload(path: str, payload: bytes, name: str) -> str:
    """Write big pickled arguments to a new file of the caller's at path; on a failure,
    leave no part of it behind.

    Raises:
        LeanpoolError: the file could not be made or written (a full disk, a size limit).
    """
    try:
        f = open(path, "xb")  # noqa: SIM115  # closed below, the file removed on failure
    except OSError as exc:
        raise LeanpoolError(f"cannot write the arguments of {name}: {exc}") from exc
    try:
        with f:
            f.write(payload)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise LeanpoolError(
            f"cannot write the arguments of {name} to {path}: {exc.strerror}"
        ) from exc
    return path


_FUNCTION_HINT = (
    " (a worker imports a function by its module and name: lambdas, nested functions "
    "and closures cannot be sent; use a module-level function)"
)


def _check_pickles(obj: object, what: str, hint: str) -> bytes:
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"{what}: {exc}{hint}") from None


def _main_importable() -> bool:
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None) is not None


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def unpickle_value(b64: str | None, spill: str | None) -> object:
    """A call's return value, from base64 or its spill file (which the caller removes
    once the whole result is built)."""
    if spill is not None:
        with open(spill, "rb") as f:
            data = f.read()
    else:
        assert b64 is not None
        data = binascii.a2b_base64(b64)
    return pickle.loads(data)  # pickled by this caller's own call


def rebuild_exception(error: CallError, pickled: str | None) -> BaseException | None:
    """The exception a call raised, as its own type, with the worker's traceback as its
    cause (as ProcessPoolExecutor does); None if it cannot be rebuilt."""
    if pickled is None:
        return None
    try:
        exc = pickle.loads(binascii.a2b_base64(pickled))  # ours, as above
    except Exception:  # a type the caller cannot import: TaskFailed then
        return None
    if not isinstance(exc, BaseException):
        return None
    exc.__cause__ = RemoteTraceback(error["traceback"])
    return exc

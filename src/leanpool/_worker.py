"""A warm Python worker: runs the calls the runner sends it, one at a time.

The runner starts it with the caller's interpreter as
``python -c WORKER_BOOTSTRAP PACKAGE_DIR CONFIG`` (see ``leanpool._runner.calls``); it
takes the caller's ``sys.path`` as its own, imports the ``preload`` modules, says it is
ready, then loops: read one request, call, flush what the call printed, write one reply
(``leanpool._protocol.calls``).  It is the only leanpool process that unpickles
anything, and it only unpickles what its own caller pickled.

Failures are data: an exception becomes a reply with ``error`` (and the pickled
exception, when it pickles, so that an ``Executor`` future raises its type again).
Only a failure to start (a ``preload`` that does not import) ends the worker, with a
``fatal`` line the runner turns into the run's one error.
"""

from __future__ import annotations

import binascii
import builtins
import ctypes
import importlib
import io
import json
import os
import pickle
import sys

from ._protocol.calls import CALL_FD, REPLY_FD
from ._protocol.records import SPILL_OVER

# Not typing's own TYPE_CHECKING: a worker's start is every first call's wait, and typing
# costs 3 ms of it.  traceback and runpy are imported when first needed, for the same
# reason.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._protocol.calls import CallError, CallReply, CallRequest, WorkerConfig, WorkerReady

__all__ = ["main"]


_main_loaded = False
_config: WorkerConfig | None = None


def main(argv: list[str]) -> int:
    """Run calls until the runner closes the call pipe."""
    global _config
    config: WorkerConfig = json.loads(argv[0])
    _config = config
    os.set_inheritable(CALL_FD, False)
    os.set_inheritable(REPLY_FD, False)
    sys.path[:] = config["path"]
    requests = open(CALL_FD, "rb", buffering=1 << 16)  # noqa: SIM115  # for the worker's life
    try:
        for name in config["preload"]:
            importlib.import_module(name)
    except BaseException as exc:  # anything at all: the worker cannot work
        import traceback  # see TYPE_CHECKING above

        text = "".join(traceback.format_exception(exc)).rstrip()
        ready: WorkerReady = {"fatal": f"preload {name!r} failed: {text}"}
        _write(ready)
        return 3
    _write({"ready": os.getpid()})
    flush_c = _c_flush()
    while True:
        line = requests.readline()
        if not line:
            return 0
        request: CallRequest = json.loads(line)
        try:
            reply = _run(request)
        finally:
            _flush(flush_c)
        if config["report_rss"]:
            reply["rss"] = _rss()
        _write(reply)


def _run(request: CallRequest) -> CallReply:
    """Make one call; every failure becomes an ``error`` reply."""
    as_pickle = "pickle" in request or "pickle_file" in request
    try:
        if as_pickle:
            if "pickle_file" in request:
                with open(request["pickle_file"], "rb") as f:
                    payload = f.read()
            else:
                payload = binascii.a2b_base64(request["pickle"])
            function, args, kwargs = _Unpickler(io.BytesIO(payload)).load()
            if isinstance(function, str):
                function = resolve(function)
        else:
            function = resolve(request["call"])
            args = request.get("args") or ()
            kwargs = request.get("kwargs") or {}
        value = function(*args, **kwargs)
    except BaseException as exc:  # SystemExit too: a call cannot end the worker
        return _error_reply(exc, as_pickle)
    try:
        if as_pickle:
            data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        else:
            json.dumps(value, allow_nan=False)  # will it go? (the reply encodes it again)
    except Exception as exc:  # a value that cannot be sent is the call's failure
        kind = "pickled" if as_pickle else "sent as JSON"
        error = TypeError(f"the return value ({type(value).__name__}) cannot be {kind}: {exc}")
        return _error_reply(error, False)
    if not as_pickle:  # a task file's call: the CLI keeps every value inline
        return {"ok": True, "value": value}
    if len(data) >= SPILL_OVER and "spill" in request:
        return {"ok": True, "value_spill": _spill(request["spill"], data)}
    return {"ok": True, "value_pickle": _b64(data)}


def resolve(name: str) -> Callable[..., Any]:
    """The object "module:qualname" names, importing the module."""
    module_name, _, qualname = name.partition(":")
    if module_name == "__main__":
        _load_main()
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{name} is not callable")
    return target  # type: ignore[no-any-return]


class _Unpickler(pickle.Unpickler):
    """Finds what the caller's ``__main__`` defined by running its script first."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__":
            _load_main()
        return super().find_class(module, name)


def _load_main() -> None:
    """Make the caller's main script (or ``-m`` module) this process's ``__main__``, run
    as ``__mp_main__`` so that its ``if __name__ == "__main__":`` block does not run."""
    global _main_loaded
    if _main_loaded:
        return
    _main_loaded = True
    assert _config is not None
    import runpy  # see TYPE_CHECKING above

    module = type(sys)("__mp_main__")
    if _config["main_module"]:
        namespace = runpy.run_module(
            _config["main_module"], run_name="__mp_main__", alter_sys=False
        )
    elif _config["main_path"]:
        namespace = runpy.run_path(_config["main_path"], run_name="__mp_main__")
    else:
        raise LookupError("the caller's __main__ has no file (an interactive session)")
    module.__dict__.update(namespace)
    sys.modules["__mp_main__"] = sys.modules["__main__"] = module


def _error_reply(exc: BaseException, as_pickle: bool) -> CallReply:
    import traceback  # see TYPE_CHECKING above

    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    error: CallError = {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    reply: CallReply = {"ok": False, "error": error}
    if as_pickle:
        try:
            data = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)  # it must come back, or the caller gets TaskFailed
        except Exception:  # text only then
            pass
        else:
            reply["exception_pickle"] = _b64(data)
    return reply


def _spill(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _write(record: CallReply | WorkerReady) -> None:
    data = json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
    view = memoryview(data)
    while view:
        view = view[os.write(REPLY_FD, view) :]


def _c_flush() -> Callable[[], object] | None:
    """libc's fflush(NULL): what a C extension printed with stdio is a call's output too."""
    try:
        return ctypes.CDLL(None).fflush
    except (OSError, AttributeError):
        return None


def _flush(flush_c: Callable[..., object] | None) -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            try:  # noqa: SIM105  # contextlib is one import more at start
                stream.flush()
            except Exception:  # a call that closed or replaced them
                pass
    if flush_c is not None:
        flush_c(None)


def _rss() -> int:
    try:
        with builtins.open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

"""The runner-worker protocol: how a call reaches a warm Python worker and comes back.

A worker is a Python process the runner starts (never a fork of the caller) to run
calls one at a time.  Besides stdin (/dev/null), stdout and stderr (pipes the runner
drains, so what a call prints comes back as its output), it has two descriptors:

- ``CALL_FD`` (3), read: one ``CallRequest`` JSON line per call; EOF means "exit now";
- ``REPLY_FD`` (4), written: one ``WorkerReady`` line once it has imported ``preload``,
  then one ``CallReply`` line per call, written after the call's output is flushed,
  so that the runner, once it reads the reply, finds all of that output in the pipes.

The runner never decodes a pickle: ``pickle`` and ``value_pickle`` are base64 strings it
forwards as they are.  Standard library only: both sides import this module.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's own: a worker starts without importing typing (3 ms)
if TYPE_CHECKING:
    from typing import Final, TypedDict

__all__ = ["CALL_FD", "REPLY_FD"]

CALL_FD: Final = 3
REPLY_FD: Final = 4


if TYPE_CHECKING:  # the shapes; at run time a worker needs only the numbers above

    class WorkerConfig(TypedDict):
        """How the caller's interpreter is set up, so that its own modules import: the
        worker's single command-line argument, as JSON (with ``preload`` and ``report_rss``
        filled in by the runner)."""

        executable: str
        path: list[str]
        """The caller's ``sys.path``, which the worker takes as its own."""
        main_path: str | None
        """The caller's ``__main__`` script, run as ``__mp_main__`` the first time a call
        names something of ``__main__`` (as multiprocessing's spawn method does)."""
        main_module: str | None
        """Or the module the caller ran with ``python -m``."""
        preload: list[str]
        report_rss: bool

    class _RequestRequired(TypedDict):
        call: str

    class CallRequest(_RequestRequired, total=False):
        """One call: ``call`` names the function; the arguments are JSON (``args``,
        ``kwargs``) or one ``pickle`` of ``(function, args, kwargs)``, inline (base64) or in
        the caller's file ``pickle_file``.  ``spill``: a path where a big return value goes,
        as raw bytes, instead of inline."""

        args: list[object]
        kwargs: dict[str, object]
        pickle: str
        pickle_file: str
        spill: str

    class CallError(TypedDict):
        """A call that raised (or could not be made): the exception's type (qualified), its
        message, and the traceback as the worker formatted it."""

        type: str
        message: str
        traceback: str

    class WorkerReady(TypedDict, total=False):
        """The worker's first line: ``ready`` (its pid) once preload imported, or ``fatal``
        (a message with the traceback) when it cannot work at all."""

        ready: int
        fatal: str

    class _ReplyRequired(TypedDict):
        ok: bool

    class CallReply(_ReplyRequired, total=False):
        """How one call ended.  The result fields (``value``, ``value_pickle``,
        ``value_spill``, ``error``, ``exception_pickle``) go into the result record as they
        are; ``rss`` (bytes) is the worker's size after the call, for ``max_worker_memory``."""

        value: object
        value_pickle: str
        value_spill: str
        error: CallError
        exception_pickle: str
        rss: int

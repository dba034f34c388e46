"""The runner's entry point: one ``try`` that turns any failure into one ``fatal`` record.

The runner's stdout carries records only, never a traceback: an expected failure (a bad
task file, an unusable journal, a caller that breaks the protocol) becomes a ``fatal``
record naming it; an unexpected one also prints its traceback to stderr, which the
caller keeps for its error message.  Exit status: 0 after an ``end`` record, 1 after a
``fatal`` one.  The cluster driver enters through ``run_main`` too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING, Protocol

from .._errors import JournalError, TaskFileError
from .._protocol.config import complete_config
from .._protocol.records import encode_line
from .intake import ControlError
from .loop import Runner
from .reports import fatal_record

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._protocol.config import RunnerConfig
    from .._protocol.records import FatalKind
    from .outbox import Outbox

__all__ = ["Run", "main", "run_main"]


class Run(Protocol):
    """What ``run_main`` runs: the lean runner's ``Runner``, the ``ClusterDriver``."""

    outbox: Outbox

    def run(self) -> int: ...

    def abandon(self) -> None:
        """After a failure, before the fatal record: let go of what runs elsewhere."""


def main(argv: list[str]) -> int:
    """Run the tasks the JSON config in argv[0] describes."""
    return run_main(argv, Runner)


def run_main(argv: list[str], make: Callable[[RunnerConfig], Run]) -> int:
    """Build the run from the JSON config in argv[0] and run it; any failure is one
    ``fatal`` record."""
    run = None
    try:
        try:
            config = complete_config(json.loads(argv[0]))
        except ValueError as exc:  # not JSON, or no input: nothing can run
            _fatal(None, "protocol", f"the caller's config cannot be used: {exc}")
            return 1
        run = make(config)
        return run.run()
    except TaskFileError as exc:
        _fatal(run, "task_file", str(exc), bad_line=exc)
    except JournalError as exc:
        _fatal(run, "journal", str(exc))
    except ControlError as exc:
        _fatal(run, "protocol", f"the caller broke the protocol: {exc}")
    except OSError as exc:
        _fatal(run, "runner", f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc))
    except Exception as exc:
        import traceback  # here only: with linecache and tokenize, 2 ms of every start

        traceback.print_exc()
        _fatal(run, "runner", f"{type(exc).__name__}: {exc}")
    return 1


def _fatal(
    run: Run | None, kind: FatalKind, message: str, *, bad_line: TaskFileError | None = None
) -> None:
    """Send the results still buffered (each is journaled, and one may be half sent),
    then the fatal record: the stream stays a stream of whole records."""
    if run is not None:
        with contextlib.suppress(Exception):
            run.abandon()
        with contextlib.suppress(OSError):
            run.outbox.flush(final=True)
    with contextlib.suppress(OSError):
        os.set_blocking(1, True)
        os.write(1, encode_line(fatal_record(kind, message, bad_line=bad_line)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

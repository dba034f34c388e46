"""The runner's entry point: one ``try`` that turns any failure into one ``fatal`` record.

The runner's stdout carries records only, never a traceback: an expected failure (a bad
task file, an unusable journal, a caller that breaks the protocol) becomes a ``fatal``
record naming it; an unexpected one also prints its traceback to stderr, which the
caller keeps for its error message.  Exit status: 0 after an ``end`` record, 1 after a
``fatal`` one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from typing import TYPE_CHECKING

from .._errors import JournalError, TaskFileError
from .._protocol.records import PROTOCOL_VERSION, encode_line
from .intake import ControlError
from .loop import Runner

if TYPE_CHECKING:
    from .._protocol.config import RunnerConfig
    from .._protocol.records import FatalKind, FatalRecord

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Run the tasks the JSON config in argv[0] describes."""
    runner = None
    try:
        config: RunnerConfig = json.loads(argv[0])
        runner = Runner(config)
        return runner.run()
    except TaskFileError as exc:
        _fatal(runner, "task_file", str(exc), line=exc.line, reason=exc.reason)
    except JournalError as exc:
        _fatal(runner, "journal", str(exc))
    except ControlError as exc:
        _fatal(runner, "protocol", f"the caller broke the protocol: {exc}")
    except OSError as exc:
        _fatal(runner, "runner", f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc))
    except Exception as exc:
        traceback.print_exc()
        _fatal(runner, "runner", f"{type(exc).__name__}: {exc}")
    return 1


def _fatal(
    runner: Runner | None,
    kind: FatalKind,
    message: str,
    *,
    line: int | None = None,
    reason: str = "",
) -> None:
    """Send the results still buffered (each is journaled, and one may be half sent),
    then the fatal record: the stream stays a stream of whole records."""
    if runner is not None:
        with contextlib.suppress(OSError):
            runner.outbox.flush(final=True)
    record: FatalRecord = {
        "leanpool": "fatal",
        "protocol": PROTOCOL_VERSION,
        "error": kind,
        "message": message,
    }
    if line is not None:
        record["line"] = line
        record["reason"] = reason
    with contextlib.suppress(OSError):
        os.set_blocking(1, True)
        os.write(1, encode_line(record))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

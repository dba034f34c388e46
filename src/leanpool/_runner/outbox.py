"""Where finished results go: the journal first, then the caller, in order if asked.

Writing to the caller never blocks the loop: stdout is non-blocking, what it does not
take waits in a buffer, and the loop watches stdout for room (``backlog`` tells it to
start no task while the caller is far behind).  A result is appended to the journal
before it is buffered for the caller, so a result the caller has seen is always durable
once the journal is synced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
from typing import TYPE_CHECKING, Final

from .._protocol.records import encode_line

if TYPE_CHECKING:
    from .._protocol.journal import Journal
    from .piped import Poller
    from .results import Built

__all__ = ["OUTPUT_BACKLOG", "Outbox"]

OUTPUT_BACKLOG: Final = 8 << 20
"""Bytes of results waiting for a slow caller before the runner stops starting tasks:
bounds the runner's memory when the caller does not keep up, without blocking the loop."""

_BIG_PIPE: Final = 1 << 20
"""The size asked for the runner's stdout pipe: fewer wake-ups of a caller reading many
small results."""


class Outbox:
    """The runner's stdout and its journal.

    Invariants: ``_buf[_pos:]`` is what the caller has not been sent yet; with
    ``ordered``, ``_held`` maps the seq of each result waiting for an earlier one to its
    line, and ``_next_seq`` is the seq to send next; ``caller_gone`` becomes true at the
    first EPIPE and stays so.
    """

    def __init__(self, epoll: Poller, journal: Journal | None, *, ordered: bool) -> None:
        self._epoll = epoll
        self.journal = journal
        self.ordered = ordered
        self._buf = bytearray()
        self._pos = 0
        self._watching = False
        self._pollable = True
        self._held: dict[int, bytes] = {}
        self._held_size = 0
        self._next_seq = 0
        self.caller_gone = False
        os.set_blocking(1, False)
        with contextlib.suppress(OSError):  # not a pipe, or over the pipe quota: keep it
            fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, _BIG_PIPE)

    @property
    def unsent(self) -> int:
        """Bytes of results queued for the caller and not yet taken."""
        return len(self._buf) - self._pos

    @property
    def backlog(self) -> int:
        """Bytes of results not yet taken by the caller, those held for order included."""
        return len(self._buf) - self._pos + self._held_size

    def control(self, line: bytes) -> None:
        """Queue a control record, after every result queued before it."""
        self._buf += line

    def result(self, built: Built, seq: int) -> None:
        """Journal, then queue, one final result.

        Raises:
            JournalError: the journal refused it; the caller has not been sent it either.
        """
        line = built.line
        if line is None:
            assert built.record is not None  # only an encoded Built has none
            line = encode_line(built.record)
        journal_line = built.journal_line
        if self.journal is not None and journal_line is None:
            journal_line = line if built.journal is None else encode_line(built.journal)
        self.line(line, journal_line, seq)

    def line(self, line: bytes, journal_line: bytes | None, seq: int) -> None:
        """Journal (when a journal is kept: ``journal_line``), then queue, one final
        result already encoded.

        Raises:
            JournalError: the journal refused it; the caller has not been sent it either.
        """
        if self.journal is not None:
            assert journal_line is not None
            self.journal.append(journal_line)
        if not self.ordered:
            self._buf += line
            return
        held = self._held
        held[seq] = line
        self._held_size += len(line)
        while self._next_seq in held:
            sent = held.pop(self._next_seq)
            self._held_size -= len(sent)
            self._buf += sent
            self._next_seq += 1

    def release_held(self) -> None:
        """Queue the ordered results still held: the tasks before them will never end."""
        for seq in sorted(self._held):
            self._buf += self._held[seq]
        self._held.clear()
        self._held_size = 0

    def flush(self, *, final: bool = False) -> None:
        """Send what the caller's pipe takes now (all of it, blocking, when final)."""
        buf = self._buf
        if final:
            os.set_blocking(1, True)
        while self._pos < len(buf):
            try:
                if not self._pos:
                    self._pos = os.write(1, buf)
                    continue
                with memoryview(buf) as view:  # released at once, so buf may grow again
                    self._pos += os.write(1, view[self._pos :])
            except BlockingIOError:
                if not self._watching and self._pollable:
                    try:
                        self._epoll.register(1, select.EPOLLOUT)
                        self._watching = True
                    except OSError:  # a regular file: it never blocks for long
                        self._pollable = False
                        os.set_blocking(1, True)
                return
            except BrokenPipeError:
                self.caller_gone = True
                break
        buf.clear()
        self._pos = 0
        if self._watching:
            self._epoll.unregister(1)
            self._watching = False

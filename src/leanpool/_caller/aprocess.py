"""The runner read through an asyncio event loop: the async caller's ``RunnerProcess``.

The same runner, the same control records, the same ``RecordReader``; only the waiting
differs, so that the loop is never blocked for more than a few milliseconds:

- the runner's stdout is non-blocking and read when the loop says it is readable
  (``add_reader``: no thread per result, and no ``StreamReader`` line limit, since the
  reader takes lines of any length however the bytes were cut);
- the waits for the runner's exit poll it from the loop, and the ``/proc`` sweep after
  a crash runs in the loop's default executor (a thread);
- starting the runner is one ``posix_spawn``-like ``Popen`` (its vfork path), and a
  control record is one small write to a pipe the runner drains.

Cancellation: ``aclose()`` is what every way out runs (the end, an exception, a cancel,
``aclose()`` of the generator).  If it is itself cancelled, it stops waiting: the runner
gets SIGKILL and the run's processes are swept at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from typing import TYPE_CHECKING, Final

from .._protocol.reader import Ended, Fatal
from .process import RunnerProcess, fatal_error
from .sweep import sweep_run

if TYPE_CHECKING:
    from .._protocol.config import RunnerConfig
    from .._protocol.reader import Event

__all__ = ["AsyncRunnerProcess"]

_READ_SIZE: Final = 1 << 16
"""Bytes per read: decoding one chunk (a few hundred small results) takes a few ms at
most, so the loop gets control back between chunks."""

_POLL_S: Final = (0.001, 0.002, 0.005, 0.01, 0.02)
"""Pauses between looks at whether the runner has exited: short first, since it exits
a moment after its last record."""


class AsyncRunnerProcess(RunnerProcess):
    """One running runner, read through the running event loop; always ``aclose()``."""

    def __init__(self, config: RunnerConfig, workdir: str) -> None:
        super().__init__(config, workdir)
        os.set_blocking(self._stdout_fd, False)
        self._pending: collections.deque[Event] = collections.deque()
        self._readable: asyncio.Future[None] | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None

    async def next_event(self) -> Event:
        """The runner's next event; ``Ended`` is the last.

        Raises:
            TaskFileError, JournalError, RunnerError: the runner's ``fatal`` record.
            RunnerCrashed: its output ended without a last record (every process of the
                run has been killed first).
            ProtocolError: it wrote something that is not a record.
        """
        while not self._pending:
            data = await self._read()
            if not data:
                returncode = await self._await_exit(self.shutdown_wait)
                await asyncio.get_running_loop().run_in_executor(None, sweep_run, self.token)
                self.reader.close(returncode, self.stderr_tail())  # raises RunnerCrashed
                raise AssertionError("close() at EOF raises")  # pragma: no cover
            self._pending.extend(self.reader.feed(data))
        event = self._pending.popleft()
        if isinstance(event, Ended):
            self.end = event.record
            await self._await_exit(self.shutdown_wait)
        elif isinstance(event, Fatal):
            await self._await_exit(self.shutdown_wait)
            raise fatal_error(event.record, self.reader.completed)
        return event

    async def _read(self) -> bytes:
        """The next bytes of the runner's stdout, waiting on the loop when none are there.

        The descriptor stays registered with the loop while reads keep waiting (not one
        ``add_reader`` per wait); when it is readable and nobody waits (the caller is
        busy with a result), it is unregistered, so the loop does not spin on it.
        """
        fd = self._stdout_fd
        while True:
            try:
                return os.read(fd, _READ_SIZE)
            except BlockingIOError:
                pass
            loop = asyncio.get_running_loop()
            if self._reader_loop is not loop:
                self._stop_reading()
                loop.add_reader(fd, self._on_readable)
                self._reader_loop = loop
            self._readable = loop.create_future()
            try:
                await self._readable
            finally:
                self._readable = None

    def _on_readable(self) -> None:
        readable = self._readable
        if readable is None:
            self._stop_reading()
        elif not readable.done():
            readable.set_result(None)

    def _stop_reading(self) -> None:
        if self._reader_loop is not None:
            with contextlib.suppress(Exception):  # a loop closed meanwhile
                self._reader_loop.remove_reader(self._stdout_fd)
            self._reader_loop = None

    async def _await_exit(self, timeout: float) -> int | None:
        """The runner's exit status once it exits; None if it runs on past timeout."""
        deadline_at = time.monotonic() + timeout
        pauses = iter(_POLL_S)
        while True:
            returncode = self._proc.poll()
            if returncode is not None or time.monotonic() >= deadline_at:
                return returncode
            await asyncio.sleep(next(pauses, _POLL_S[-1]))

    async def aclose(self) -> None:
        """Stop the runner if it still runs, and make sure no task of this run survives.

        Cancelled meanwhile, it waits no more: SIGKILL for the runner, then the sweep.
        """
        proc = self._proc
        self._stop_reading()
        try:
            if proc.poll() is None:
                self._ask_to_stop()
                if await self._await_exit(self.shutdown_wait) is None:
                    proc.kill()
                    await self._await_exit(self.shutdown_wait)
                    await asyncio.get_running_loop().run_in_executor(None, sweep_run, self.token)
        except BaseException:
            # Cancelled (or the loop is going away) while cleaning up: no more waiting.
            if proc.poll() is None:
                proc.kill()
                sweep_run(self.token)
            raise
        finally:
            self._release()

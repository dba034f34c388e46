"""``Executor``: leanpool's calls behind the ``concurrent.futures.Executor`` interface.

One executor is one open-ended run: the first ``submit`` starts a runner whose input
never ends until ``shutdown``; each submit appends a call to the spool and tells the
runner (a ``more`` record); one collector thread reads the runner's records and
resolves the futures.  So a crash of a worker fails one future (the pool is never
"broken" by it), a timeout kills the call's process group, and ``cancel()`` works on a
running future too: it kills the call.

Threads: ``submit``, ``cancel`` and ``shutdown`` may come from any thread; ``_Session``'s
lock orders their writes to the spool and the runner's stdin.  The collector thread
holds the session, never the executor, so an executor dropped without ``shutdown`` is
collected, and its finalizer ends the run.
"""

from __future__ import annotations

import atexit
import collections
import collections.abc
import concurrent.futures
import contextlib
import itertools
import os
import shutil
import tempfile
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._caller.calls import call_record, rebuild_exception, worker_config
from ._caller.options import make_options
from ._caller.process import RunnerProcess
from ._caller.progress import Progress
from ._caller.result import result_from_record
from ._errors import TaskFailed
from ._protocol.config import runner_config
from ._protocol.reader import Idle, ResultEvent
from ._protocol.spool import SpoolWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable

    from typing_extensions import ParamSpec, Unpack

    from ._caller.options import KeywordOptions
    from ._caller.result import Result
    from ._protocol.config import Options

    P = ParamSpec("P")

__all__ = ["Executor"]

T = TypeVar("T")

_MAP_AHEAD_PER_WORKER: Final = 8
"""``map`` keeps this many calls per worker submitted ahead of the one it yields (at
least 64): enough that workers never wait on the consumer's round trip, few enough that
``map`` over an endless iterator holds a bounded number of futures."""

_live_sessions: weakref.WeakSet[_Session] = weakref.WeakSet()


@atexit.register
def _finish_at_exit() -> None:
    # As concurrent.futures does: the calls submitted still run before the interpreter
    # exits (our collector thread is a daemon, so this is where we wait for it).
    for session in list(_live_sessions):
        session.shutdown(wait=True, cancel_futures=False)


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run in warm worker processes of a
    lean runner process: never forks of this (big) process.

    Example::

        with Executor(max_workers=8) as ex:
            future = ex.submit(extract, path, lang="en")
            for value in ex.map(score, rows):  # lazy: rows may be endless
                ...

    What differs from ``ProcessPoolExecutor``: a worker that dies fails only the call it
    ran (``TaskFailed``), never the pool; ``timeout`` kills a call that runs too long
    (its future raises ``TimeoutError``); ``cancel()`` on a running future kills it;
    ``map`` submits lazily, so it works on an endless iterator.  Futures never report
    ``running()``: the runner starts calls as workers free up, without telling.

    Args:
        max_workers: how many calls run at once (each in its own worker); default
            twice the usable CPUs.
        tmpdir: where the private spool directory is made.
        **options: ``TaskRunner``'s options: ``timeout``, ``kill_grace``, ``preload``,
            ``max_tasks_per_worker``, ``max_worker_memory``, ``retries``, ``journal``...

    Raises:
        TypeError, ValueError: an option is unknown, of the wrong kind or out of range.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        tmpdir: str | os.PathLike[str] | None = None,
        **options: Unpack[KeywordOptions],
    ) -> None:
        self._session = _Session(make_options(parallel=max_workers, **options), tmpdir)
        self._finalizer = weakref.finalize(
            self, self._session.shutdown, wait=False, cancel_futures=False
        )

    @property
    def max_workers(self) -> int:
        """How many calls run at once."""
        return self._session.options["parallel"]

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return its Future.

        Raises:
            TypeError: fn or an argument cannot be sent to a worker (a lambda, a
                closure, something that does not pickle).
            RuntimeError: after ``shutdown``.
            concurrent.futures.BrokenExecutor: the runner died.
        """
        return self._session.submit(fn, args, kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Generator[T, None, None]:
        """``fn`` over the iterables' items, in order, submitted lazily.

        At most ``buffersize`` calls are in flight (default: 8 per worker, at least 64);
        the next is submitted as a value is yielded, so an endless or huge iterable
        works and its items are not all held.  Leaving the loop early cancels (kills)
        the calls still in flight.

        Args:
            timeout: seconds from this call until each value must be ready, else
                ``TimeoutError`` (as ``concurrent.futures``).
            chunksize: accepted for compatibility; each item is its own call.
            progress: show a progress bar (tqdm.auto), with a total when the
                iterables have a length.
        """
        del chunksize  # each item is a call: the runner's per-call cost is small
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be at least 1")
        ahead = buffersize or max(64, _MAP_AHEAD_PER_WORKER * self.max_workers)
        deadline_at = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            sizes = [len(i) for i in iterables if isinstance(i, collections.abc.Sized)]
            total = min(sizes) if len(sizes) == len(iterables) and sizes else None
            bar = Progress(total=total)
        items = zip(*iterables)  # noqa: B905  # as map(): the shortest iterable ends it
        window: collections.deque[Future[T]] = collections.deque(
            self.submit(fn, *item) for item in itertools.islice(items, ahead)
        )

        def values() -> Generator[T, None, None]:
            try:
                while window:
                    future = window.popleft()
                    remaining = None if deadline_at is None else deadline_at - time.monotonic()
                    try:
                        value = future.result(remaining)
                    finally:
                        if bar is not None and future.done():
                            bar.advance(ok=not future.cancelled() and future.exception() is None)
                    for item in itertools.islice(items, 1):
                        window.append(self.submit(fn, *item))
                    yield value
            finally:
                for future in window:
                    future.cancel()
                if bar is not None:
                    bar.close()

        return values()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits; end the run once the calls submitted are done.

        Args:
            wait: return only when every call has ended and the runner is gone.
            cancel_futures: cancel the futures not done (running calls are killed).
        """
        self._session.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __repr__(self) -> str:
        return f"<leanpool.Executor max_workers={self.max_workers}>"


class Future(concurrent.futures.Future[T]):
    """A call's future: ``cancel()`` also stops a call that runs (it is killed)."""

    def __init__(self, session: _Session, task_id: int) -> None:
        super().__init__()
        self._session = session
        self._task_id = task_id

    def cancel(self) -> bool:
        """Cancel the call: never start it, or kill it if it runs.  False once it is done."""
        if self.done():
            return self.cancelled()
        self._session.cancel(self._task_id)
        return super().cancel()


class _Session:
    """The run behind one Executor.

    Invariants: ``futures`` holds every submitted future whose result has not come;
    ``announced`` is the spool offset the runner was last told of; once ``closing``,
    nothing is submitted, and the runner has been (or, when it starts, will be) told
    that input ended.
    """

    def __init__(self, options: Options, tmpdir: str | os.PathLike[str] | None) -> None:
        self.options = options
        self._tmpdir = tmpdir
        self._lock = threading.Lock()
        self.futures: dict[int, Future[Any]] = {}
        self._ids = itertools.count()
        self._runner: RunnerProcess | None = None
        self._spool: SpoolWriter | None = None
        self._workdir: str | None = None
        self._thread: threading.Thread | None = None
        self._announced = 0
        self._closing = False
        self._broken: str | None = None
        self._big: set[int] = set()
        """Ids of calls whose arguments are in a file, removed once the call is done."""

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        with self._lock:  # before anything is written for it
            self._check_open()
        task_id = next(self._ids)
        record = call_record(task_id, fn, args, kwargs, None, lambda: self._payload_path(task_id))
        if "pickle_file" in record:
            self._big.add(task_id)
        future: Future[Any] = Future(self, task_id)
        with self._lock:
            self._check_open()
            if self._runner is None:
                self._start()
            assert self._spool is not None
            assert self._runner is not None
            self._spool.append(record)
            self.futures[task_id] = future
            self._announced = self._spool.flush()
            self._runner.more(self._announced)
        return future

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if self._broken is not None:
            raise concurrent.futures.BrokenExecutor(self._broken)

    def _payload_path(self, task_id: int) -> str:
        with self._lock:
            return os.path.join(self._directory(), f"call-{task_id}.pickle")

    def _directory(self) -> str:
        """The run's private directory, made on first need (under the lock)."""
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="leanpool-", dir=self._tmpdir)
        return self._workdir

    def _start(self) -> None:
        workdir = self._directory()
        self._spool = spool = SpoolWriter(workdir)
        config = runner_config(
            self.options, spool_path=spool.path, workdir=workdir, workers=worker_config()
        )
        self._runner = RunnerProcess(config, workdir)
        _live_sessions.add(self)
        self._thread = threading.Thread(target=self._collect, name="leanpool-executor", daemon=True)
        self._thread.start()

    def cancel(self, task_id: int) -> None:
        with self._lock:
            if self._runner is not None and task_id in self.futures:
                assert self._spool is not None
                self._runner.cancel(task_id, self._spool.offset)

    def shutdown(self, *, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            first = not self._closing
            self._closing = True
            runner, thread = self._runner, self._thread
            pending = list(self.futures.values()) if cancel_futures else []
        for future in pending:
            future.cancel()
        if first and runner is not None:
            with self._lock:
                runner.end_input(self._announced)
        elif runner is None and self._workdir is not None:  # no call was ever sent
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the collector thread --------------------------------------------------------------

    def _collect(self) -> None:
        runner = self._runner
        assert runner is not None
        error: BaseException | None = None
        try:
            for event in runner.events():
                if isinstance(event, ResultEvent):
                    self._resolve(result_from_record(event.record))
                elif isinstance(event, Idle):
                    pass  # an executor's input ends only at shutdown
        except BaseException as exc:  # every future must hear of it
            error = exc
        finally:
            with self._lock:
                if error is None:
                    self._closing = True
                else:
                    self._broken = f"the leanpool runner is gone: {error}"
                pending = list(self.futures.values())
                self.futures.clear()
            for future in pending:
                if not future.done():
                    future.set_exception(
                        concurrent.futures.BrokenExecutor(
                            f"the leanpool runner ended before this call did: {error}"
                        )
                    )
            runner.close()
            if self._spool is not None:
                self._spool.discard()
            with self._lock:
                workdir, self._workdir = self._workdir, None
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            _live_sessions.discard(self)

    def _resolve(self, result: Result) -> None:
        task_id = result.id
        assert isinstance(task_id, int)
        if task_id in self._big:
            self._big.discard(task_id)
            with contextlib.suppress(OSError):
                os.unlink(self._payload_path(task_id))
        with self._lock:
            future = self.futures.pop(task_id, None)
        if future is None or future.done():
            return  # cancelled: its future says so already
        outcome = None if result.ok else _exception_of(result)
        # A cancel() from another thread may still come first: then it is cancelled.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if outcome is None:
                future.set_result(result.value)
            else:
                future.set_exception(outcome)


def _exception_of(result: Result) -> BaseException:
    """What a failed call's future raises: its own exception where it can be rebuilt."""
    error = result.error
    if isinstance(error, dict):
        rebuilt = rebuild_exception(error, result.exception_pickle)
        if rebuilt is not None:
            return rebuilt
    if result.timed_out:
        return TimeoutError(f"the call timed out (task {result.id!r}, ended by {result.signal})")
    try:
        result.check()
    except TaskFailed as exc:
        return exc
    raise AssertionError("a failed result fails its check")  # pragma: no cover

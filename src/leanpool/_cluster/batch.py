"""What runs on a Dask worker: one batch of tasks, through the local lean runner.

The driver sends a batch as a ``BatchSpec``: the tasks' own lines, the run's options.
``run_batch`` hands them to the lean runner its worker thread keeps for the run
(``_Feed``: a local run in stream mode, fed batch after batch, so that a batch costs no
runner start), so timeouts kill process groups on the worker, output is drained there,
and nothing leaves the worker's machine before a task has ended.  It returns the
runner's result lines as they came (``BatchOutcome``), with how the batch ended.

Where a batch's tasks travel.  Not in the Dask task: the scheduler and the client keep
each stream's last 1,000 messages (``distributed.admin.low-level-log-length``), so lines
inside the task made the scheduler's memory grow with every task of the run.  The driver
puts a batch's lines in a Dask ``Variable`` (held by the scheduler, which keeps no copy
of what a request carried) and the task names it (``tasks_at``); the batch fetches them,
and the driver deletes the variable once the batch is done with.  A batch run again
after its worker died finds its lines there still.

Results sooner than the batch's end.  A running batch keeps the result lines that
arrived since the driver last asked (``_Live.pending``); every quarter second or so the
driver asks every worker for them (``take_early``, through ``client.run``: a request
and its answer, which the scheduler does not keep).  The outcome still carries every
line: an early line is a copy, and the driver records each task once, whichever copy
comes first.  Only lines up to ``EARLY_LINE_MAX`` bytes travel early, and at most
``EARLY_TAKE_MAX`` bytes per batch and request.

Stopping a batch that runs.  Dask never stops a running task (distributed#4694), so a
batch watches for itself, in a thread, every ``WATCH_S``:

- its own task's state on this worker: once the driver cancels the batch's future, or
  the driver is gone (the scheduler releases a dead client's keys), the state is no
  longer ``executing``, and the batch stops its runner: every task group gets SIGTERM,
  SIGKILL 0.5 s later.  A local look, no message to the scheduler;
- what the driver pushes to every worker with ``client.run(control, ...)``: ``halt``
  (start no more tasks), ``stop`` (kill them and report what finished), ``cancel``
  (one task).  A control for a batch that has not started here yet is kept for it
  (``_EARLY``): it may start here later.

Imports nothing of dask at module level: a worker unpickles ``run_batch`` by reference,
and the driver imports this module to name it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Final, Literal, TypedDict

from .._errors import RunnerError
from .._protocol.config import runner_config
from .._protocol.reader import Ended, Idle, ResultEvent
from .._protocol.records import PROTOCOL_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._caller.process import RunnerProcess
    from .._protocol.config import Options, TaskFormat
    from .._protocol.records import EndRecord

__all__ = [
    "EARLY_LINE_MAX",
    "EARLY_TAKE_MAX",
    "FETCH_TIMEOUT_S",
    "WATCH_S",
    "BatchOutcome",
    "BatchSpec",
    "Control",
    "EarlyLines",
    "ProtocolMismatch",
    "control",
    "run_batch",
    "take_early",
]

WATCH_S: Final = 0.1
"""How often a running batch looks whether its future was cancelled: a stopped run's
tasks are signalled at most this long after the driver (or the scheduler) let go."""

EARLY_LINE_MAX: Final = 1 << 16
"""Result lines longer than this come with the outcome only."""

EARLY_TAKE_MAX: Final = 1 << 20
"""Bytes of result lines one batch hands over early per request at most; the rest of
what arrived meanwhile comes with the outcome only."""

FETCH_TIMEOUT_S: Final = 60.0
"""Seconds a batch waits for its lines' variable: it exists before the batch is
submitted, so only a driver that let go of the batch meanwhile makes it wait."""

IDLE_S: Final = 1.0
"""Seconds a worker thread's runner waits for the run's next batch before it ends."""

_EARLY_KEEP: Final = 10_000
"""Controls kept for batches that have not started on this worker (most never will:
every worker hears every control); the oldest are dropped first."""

Control = Literal["halt", "stop", "cancel", "finish"]


class ProtocolMismatch(Exception):
    """The driver and this worker's leanpool speak different protocol versions."""


class BatchSpec(TypedDict):
    """One batch, as the driver submits it."""

    protocol: int
    """The driver's ``PROTOCOL_VERSION``: a worker with another leanpool refuses it."""
    token: str
    """The run's; ``control`` names the run by it."""
    key: str
    """The batch's own: its Dask key, unique per submission."""
    format: TaskFormat
    tasks_at: str
    """The name of the Dask ``Variable`` holding the tasks' lines, as one ``bytes`` of
    newline-ended lines, each as in the task file (``lines``: a command per line, whose
    id the driver maps back from its position)."""
    options: Options
    """The run's options, less what the driver does itself (journal, resume, halt)."""
    parallel: int | None
    """Tasks at once; None: twice this machine's usable CPUs, shared by its threads."""
    slot_env: str | None


class EarlyLines(TypedDict):
    """Result lines of a running batch, handed over before its outcome."""

    key: str
    lines: list[bytes]
    line_base: int
    """As ``BatchOutcome.line_base``."""


class BatchOutcome(TypedDict):
    """How one batch ended, as the driver gets it back."""

    results: list[bytes]
    """The runner's result lines, as it sent them."""
    end: EndRecord | None
    """Its ``end`` record; None when it failed (``error``)."""
    error: str | None
    """Why the batch could not run to its end (a ``preload`` that failed, say): the
    driver ends the run with it."""
    error_kind: str | None
    """The runner's fatal error kind for ``error`` (``worker``, ``runner``, ...)."""
    elapsed: float
    """Seconds the batch ran on the worker, queueing excluded: the driver sizes the
    next batches by it."""
    line_base: int
    """Lines its runner had read before this batch: a ``lines`` task's id, less this,
    is its place in the batch."""
    worker: str
    """Where it ran (the worker's address, or the host name outside a worker)."""


class _Feed:
    """The lean runner one worker thread keeps for one run, fed batch after batch.

    A batch on a worker thread does not start a runner of its own (tens of ms, during
    which the thread runs nothing): its thread's runner, started by the run's first
    batch there, reads a spool in stream mode, and each batch appends its lines and
    announces them (``more``).  A thread runs one batch at a time, so whatever the
    runner reports belongs to the batch it is running; the batch is over at the
    runner's ``idle`` for the batch's last offset.  A runner that was stopped or halted
    ends its run; the next batch of the thread starts a new one.  An idle feed is closed
    ``IDLE_S`` after its last batch, or at once when the driver says ``finish``.

    Invariants: ``offset`` is the spool's size, all of it announced; ``lines`` counts
    the lines written (a ``lines`` run's runner numbers its tasks by them); ``busy``
    is true while a batch runs; ``ended`` once the runner sent its last record.
    """

    def __init__(self, token: str, spec: BatchSpec, worker: object | None) -> None:
        from .._caller.calls import worker_config
        from .._caller.process import RunnerProcess

        self.token = token
        self.workdir = tempfile.mkdtemp(prefix="leanpool-batch-")
        self.path = os.path.join(self.workdir, "spool")
        self._spool = open(self.path, "ab")  # noqa: SIM115  # closed in close()
        workers = worker_config()
        workers["path"].insert(0, os.getcwd())
        workers["main_path"] = workers["main_module"] = None  # the worker's main is Dask's
        options = spec["options"].copy()
        options["parallel"] = spec["parallel"] or _default_parallel(worker)
        config = runner_config(
            options,
            spool_path=self.path,
            workdir=self.workdir,
            workers=workers,
            task_format=spec["format"],
            slot_env=spec["slot_env"],
            spill=False,  # every output inline: it travels back in the outcome
        )
        self.runner: RunnerProcess = RunnerProcess(config, self.workdir)
        self._events = self.runner.events()
        self.offset = 0
        self.lines = 0
        self.busy = False
        self.ended = False
        self.idle_since = time.monotonic()

    def run(self, data: bytes, live: _Live) -> BatchOutcome:
        """Run one batch's newline-ended lines; its outcome once all of them have their
        result (or the runner ended: stopped, halted, failed)."""
        outcome: BatchOutcome = {
            "results": [],
            "end": None,
            "error": None,
            "error_kind": None,
            "elapsed": 0.0,
            "worker": "",
            "line_base": self.lines,
        }
        self._spool.write(data)
        self._spool.flush()
        self.offset += len(data)
        self.lines += data.count(b"\n")
        self.runner.more(self.offset)
        results = outcome["results"]
        try:
            for event in self._events:
                if isinstance(event, ResultEvent):
                    results.append(event.line)
                    live.add(event.line)
                elif isinstance(event, Idle) and event.offset == self.offset:
                    return outcome
                elif isinstance(event, Ended):
                    outcome["end"] = event.record
                    self.ended = True
                    return outcome
        except RunnerError as exc:  # no journal, validated lines: no other error comes
            outcome["error"] = exc.message
            outcome["error_kind"] = exc.fatal_kind or "runner"
        self.ended = True
        return outcome

    def close(self) -> None:
        """End the runner (it has nothing running when idle) and remove the spool."""
        with contextlib.suppress(OSError, ValueError):
            if not self.ended:
                self.runner.end_input(self.offset)
        self.runner.close()
        self._spool.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class _Live:
    """A batch running on this worker, as ``control`` finds it, and its result lines
    not yet sent early (``pending``)."""

    def __init__(self, token: str, key: str, feed: _Feed) -> None:
        self.token = token
        self.key = key
        self.feed = feed
        self.base = feed.lines
        """The runner's line count before this batch: a ``lines`` task's id is its line."""
        self.pending: list[bytes] = []
        self.stopped = False
        self.finished = threading.Event()
        """Set when the batch has ended: the watcher's cue to end too."""
        self._lock = threading.Lock()

    def apply(self, what: Control, ids: list[str | int], *, lines_format: bool) -> None:
        # From the watcher thread and the worker's event loop: one writer at a time.
        runner = self.feed.runner
        with self._lock:
            if what == "halt":
                runner.halt()
            elif what == "cancel":
                for task_id in ids:
                    local = task_id + self.base if lines_format and type(task_id) is int else None
                    runner.cancel(task_id if local is None else local)
            elif what == "stop" and not self.stopped:
                self.stopped = True
                runner.stop()

    def add(self, line: bytes) -> None:
        if len(line) <= EARLY_LINE_MAX:
            with self._lock:
                self.pending.append(line)

    def take(self) -> EarlyLines | None:
        """The pending lines, at most ``EARLY_TAKE_MAX`` bytes of them (the rest come
        with the outcome only); None when none arrived."""
        with self._lock:
            pending, self.pending = self.pending, []
        lines = []
        size = 0
        for line in pending:
            size += len(line)
            if size > EARLY_TAKE_MAX:
                break
            lines.append(line)
        if not lines:
            return None
        return {"key": self.key, "lines": lines, "line_base": self.base}


_LIVE: dict[str, tuple[_Live, bool]] = {}
"""Batches running in this worker process, by key, with whether their run reads lines."""

_FEEDS: dict[tuple[str, int], _Feed] = {}
"""Each worker thread's runner, by run and thread."""

_EARLY: collections.OrderedDict[str, list[tuple[Control, list[str | int]]]] = (
    collections.OrderedDict()
)
"""Controls heard for batches not (yet) running here, by key (a key ``*TOKEN`` holds the
controls for every batch of a run)."""

_REGISTRY_LOCK: Final = threading.Lock()
_reaper: threading.Thread | None = None


def control(token: str, key: str | None, what: Control, ids: list[str | int]) -> None:
    """Act on a control from the driver: for the batch ``key``, or for every batch of
    the run ``token`` when ``key`` is None.  Runs on every worker (``client.run``).

    ``finish``: the run is over; its idle runners end now."""
    if what == "finish":
        _close_feeds(lambda feed: feed.token == token and not feed.busy)
        with _REGISTRY_LOCK:
            _EARLY.pop(f"*{token}", None)
        return
    with _REGISTRY_LOCK:
        targets = [
            (live, lines_format)
            for live, lines_format in _LIVE.values()
            if live.token == token and (key is None or live.key == key)
        ]
        early_key = f"*{token}" if key is None else key
        _EARLY.setdefault(early_key, []).append((what, list(ids)))
        while len(_EARLY) > _EARLY_KEEP:
            _EARLY.popitem(last=False)
    for live, lines_format in targets:
        live.apply(what, ids, lines_format=lines_format)


def take_early(token: str) -> list[EarlyLines]:
    """The result lines the run's batches running here got since the last call
    (``client.run``, on every worker, from the driver)."""
    with _REGISTRY_LOCK:
        running = [live for live, _ in _LIVE.values() if live.token == token]
    taken = [live.take() for live in running]
    return [early for early in taken if early is not None]


def run_batch(spec: BatchSpec) -> BatchOutcome:
    """Run one batch with this thread's lean runner; return its results when it ends.

    Raises:
        ProtocolMismatch: this worker's leanpool speaks another protocol version.
    """
    if spec.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"this worker's leanpool speaks protocol {PROTOCOL_VERSION}, the driver's "
            f"{spec.get('protocol')!r}: install the same leanpool on every machine"
        )
    started = time.monotonic()
    data = _fetch_lines(spec["tasks_at"])
    worker, key_state = _this_worker()
    token = spec["token"]
    lines_format = spec["format"] == "lines"
    where = (token, threading.get_ident())
    with _REGISTRY_LOCK:
        feed = _FEEDS.pop(where, None)
    if feed is None or feed.ended:
        if feed is not None:
            feed.close()
        feed = _Feed(token, spec, worker)
    feed.busy = True
    live = _Live(token, spec["key"], feed)
    with _REGISTRY_LOCK:
        _LIVE[spec["key"]] = (live, lines_format)
        early = _EARLY.pop(spec["key"], []) + list(_EARLY.get(f"*{token}", []))
    for what, ids in early:
        live.apply(what, ids, lines_format=lines_format)
    watcher = None
    if key_state is not None:
        watcher = threading.Thread(
            target=_watch,
            args=(live, key_state),
            name="leanpool-batch-watch",
            daemon=True,
        )
        watcher.start()
    try:
        outcome = feed.run(data, live)
    except BaseException:
        feed.ended = True
        raise
    finally:
        with _REGISTRY_LOCK:
            _LIVE.pop(spec["key"], None)
        live.finished.set()
        if watcher is not None:
            watcher.join(1.0)
        feed.busy = False
        feed.idle_since = time.monotonic()
        if feed.ended or live.stopped:
            feed.ended = True
            feed.close()
        else:
            with _REGISTRY_LOCK:
                _FEEDS[where] = feed
            _start_reaper()
    outcome["elapsed"] = time.monotonic() - started
    outcome["worker"] = _worker_name(worker)
    return outcome


def _fetch_lines(name: str) -> bytes:
    """The batch's lines, from the variable the driver put them in."""
    from distributed import Variable

    try:
        data = Variable(name).get(timeout=FETCH_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"the batch's tasks are gone from the scheduler ({name})") from None
    if not isinstance(data, bytes):
        raise TypeError(f"the batch's tasks came as {type(data).__name__}, not bytes")
    return data


def _close_feeds(which: Callable[[_Feed], bool]) -> None:
    with _REGISTRY_LOCK:
        chosen = [key for key, feed in _FEEDS.items() if which(feed)]
        feeds = [_FEEDS.pop(key) for key in chosen]
    for feed in feeds:
        feed.close()


def _start_reaper() -> None:
    """One thread per worker process ends the runners idle for ``IDLE_S``: a driver
    that died between two batches never says ``finish``."""
    global _reaper
    with _REGISTRY_LOCK:
        if _reaper is not None:
            return
        _reaper = threading.Thread(target=_reap, name="leanpool-feed-reaper", daemon=True)
    _reaper.start()


def _reap() -> None:
    while True:
        time.sleep(IDLE_S / 4)
        _close_feeds(_idle_too_long)


def _idle_too_long(feed: _Feed) -> bool:
    return not feed.busy and time.monotonic() - feed.idle_since >= IDLE_S


def _watch(live: _Live, key_state: _KeyState) -> None:
    """Stop the batch's runner once its future is no longer wanted (see the module)."""
    while not live.finished.wait(WATCH_S):
        if not key_state.wanted():
            live.apply("stop", [], lines_format=False)
            return


class _KeyState:
    """Whether this worker still wants the task it is running: its state stays
    ``executing`` (or ``long-running``) until the scheduler releases it."""

    def __init__(self, worker: object, key: object) -> None:
        self._tasks = worker.state.tasks  # type: ignore[attr-defined]
        self._key = key

    def wanted(self) -> bool:
        task = self._tasks.get(self._key)
        return task is not None and task.state in ("executing", "long-running")


def _this_worker() -> tuple[object | None, _KeyState | None]:
    """The Dask worker running this batch and its task's state, or (None, None) when it
    runs elsewhere (a test calling ``run_batch`` directly)."""
    try:
        from distributed import get_worker
        from distributed.worker import thread_state  # type: ignore[attr-defined]
    except ImportError:
        return None, None
    try:
        worker = get_worker()
    except ValueError:
        return None, None
    key = getattr(thread_state, "key", None)
    return worker, (None if key is None else _KeyState(worker, key))


def _worker_name(worker: object | None) -> str:
    if worker is None:
        return os.uname().nodename
    return str(getattr(worker, "address", "worker"))


def _default_parallel(worker: object | None) -> int:
    cpus = len(os.sched_getaffinity(0))
    threads = 1
    with contextlib.suppress(AttributeError, TypeError):
        threads = max(1, int(worker.state.nthreads))  # type: ignore[union-attr]
    return max(1, 2 * cpus // threads)

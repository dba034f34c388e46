"""What runs on a Dask worker: one batch of tasks, through the local lean runner.

The driver sends a batch as a ``BatchSpec``: the tasks' own lines, the run's options.
``run_batch`` writes them to a private task file and runs it with the lean runner, as a
local run would, so timeouts kill process groups on the worker, output is drained
there, and nothing leaves the worker's machine before a task has ended.  It returns the
runner's result lines as they came (``BatchOutcome``), with how the batch ended.

Results sooner than the batch's end.  Every ``PUBLISH_S`` the watcher thread sends the
result lines that arrived since, through the scheduler, as a Dask event on the run's
topic (``topic``), so that a run's results stream while its batches run.  The outcome
still carries every line: an event is an early copy, and the driver records each task
once, whichever copy comes first.  Only lines up to ``EARLY_LINE_MAX`` bytes travel
early (the scheduler keeps its last events in memory).

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
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict

from .._errors import RunnerError
from .._protocol.reader import Ended, ResultEvent
from .._protocol.records import PROTOCOL_VERSION

if TYPE_CHECKING:
    from .._caller.process import RunnerProcess
    from .._protocol.config import Options, RunnerConfig, TaskFormat
    from .._protocol.records import EndRecord

__all__ = [
    "EARLY_LINE_MAX",
    "PUBLISH_S",
    "WATCH_S",
    "BatchOutcome",
    "BatchSpec",
    "Control",
    "ProtocolMismatch",
    "control",
    "run_batch",
    "topic",
]

WATCH_S: Final = 0.1
"""How often a running batch looks whether its future was cancelled: a stopped run's
tasks are signalled at most this long after the driver (or the scheduler) let go."""

PUBLISH_S: Final = 0.25
"""How often a running batch sends its new result lines ahead of its outcome."""

EARLY_LINE_MAX: Final = 1 << 16
"""Result lines longer than this come with the outcome only."""

_EARLY_KEEP: Final = 10_000
"""Controls kept for batches that have not started on this worker (most never will:
every worker hears every control); the oldest are dropped first."""

Control = Literal["halt", "stop", "cancel"]


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
    lines: list[bytes]
    """The tasks' lines, each as in the task file (``lines``: a command per line, whose
    id the driver maps back from its position)."""
    options: Options
    """The run's options, less what the driver does itself (journal, resume, halt)."""
    parallel: int | None
    """Tasks at once; None: twice this machine's usable CPUs, shared by its threads."""
    slot_env: str | None


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
    worker: str
    """Where it ran (the worker's address, or the host name outside a worker)."""


def topic(token: str) -> str:
    """The Dask event topic on which a run's batches send results early."""
    return f"leanpool-{token}"


class _Live:
    """A batch running on this worker, as ``control`` finds it, and its result lines
    not yet sent early (``pending``)."""

    def __init__(self, token: str, key: str, runner: RunnerProcess) -> None:
        self.token = token
        self.key = key
        self.runner = runner
        self.pending: list[bytes] = []
        self.stopped = False
        self.finished = threading.Event()
        """Set when the batch has ended: the watcher's cue to end too."""
        self._lock = threading.Lock()

    def apply(self, what: Control, ids: list[str | int]) -> None:
        # From the watcher thread and the worker's event loop: one writer at a time.
        with self._lock:
            if what == "halt":
                self.runner.halt()
            elif what == "cancel":
                for task_id in ids:
                    self.runner.cancel(task_id)
            elif not self.stopped:
                self.stopped = True
                self.runner.stop()

    def add(self, line: bytes) -> None:
        if len(line) <= EARLY_LINE_MAX:
            with self._lock:
                self.pending.append(line)

    def publish(self, worker: Any) -> None:
        """Send the pending lines as one event (from the watcher thread)."""
        with self._lock:
            lines, self.pending = self.pending, []
        if lines:
            worker.log_event(topic(self.token), {"key": self.key, "lines": lines})


_LIVE: dict[str, _Live] = {}
"""Batches running in this worker process, by key."""

_EARLY: collections.OrderedDict[str, list[tuple[Control, list[str | int]]]] = (
    collections.OrderedDict()
)
"""Controls heard for batches not (yet) running here, by key (a key ``*TOKEN`` holds the
controls for every batch of a run)."""

_REGISTRY_LOCK: Final = threading.Lock()


def control(token: str, key: str | None, what: Control, ids: list[str | int]) -> None:
    """Act on a control from the driver: for the batch ``key``, or for every batch of
    the run ``token`` when ``key`` is None.  Runs on every worker (``client.run``)."""
    with _REGISTRY_LOCK:
        targets = [
            live
            for live in _LIVE.values()
            if live.token == token and (key is None or live.key == key)
        ]
        early_key = f"*{token}" if key is None else key
        _EARLY.setdefault(early_key, []).append((what, list(ids)))
        while len(_EARLY) > _EARLY_KEEP:
            _EARLY.popitem(last=False)
    for live in targets:
        live.apply(what, ids)


def run_batch(spec: BatchSpec) -> BatchOutcome:
    """Run one batch with the local lean runner; return its results when it ends.

    Raises:
        ProtocolMismatch: this worker's leanpool speaks another protocol version.
    """
    if spec.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"this worker's leanpool speaks protocol {PROTOCOL_VERSION}, the driver's "
            f"{spec.get('protocol')!r}: install the same leanpool on every machine"
        )
    from .._caller.calls import worker_config
    from .._caller.process import RunnerProcess

    started = time.monotonic()
    worker, key_state = _this_worker()
    workdir = tempfile.mkdtemp(prefix="leanpool-batch-")
    try:
        path = os.path.join(workdir, "batch.jsonl" if spec["format"] == "jsonl" else "batch.txt")
        with open(path, "wb") as f:
            for line in spec["lines"]:
                f.write(line if line.endswith(b"\n") else line + b"\n")
        workers = worker_config()
        workers["path"].insert(0, os.getcwd())
        workers["main_path"] = workers["main_module"] = None  # the worker's main is Dask's
        config: RunnerConfig = {
            "options": spec["options"],
            "input": {"path": path, "format": spec["format"], "stream": False},
            "ordered": False,
            "cleanup_dir": workdir,
            "halt_rule": None,
            "slot_env": spec["slot_env"],
            "workers": workers,
            "cluster": None,
            "spill_dir": None,  # every output inline: it travels back in the outcome
        }
        config["options"] = spec["options"].copy()
        config["options"]["parallel"] = spec["parallel"] or _default_parallel(worker)
        runner = RunnerProcess(config, workdir)
        live = _Live(spec["token"], spec["key"], runner)
        with _REGISTRY_LOCK:
            _LIVE[spec["key"]] = live
            early = _EARLY.pop(spec["key"], []) + list(_EARLY.get(f"*{spec['token']}", []))
        for what, ids in early:
            live.apply(what, ids)
        watcher = None
        if key_state is not None:
            watcher = threading.Thread(
                target=_watch,
                args=(live, key_state, worker),
                name="leanpool-batch-watch",
                daemon=True,
            )
            watcher.start()
        try:
            return _collect(runner, live if watcher else None, started, _worker_name(worker))
        finally:
            with _REGISTRY_LOCK:
                _LIVE.pop(spec["key"], None)
            live.finished.set()
            runner.close()
            if watcher is not None:
                watcher.join(1.0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _collect(runner: RunnerProcess, live: _Live | None, started: float, where: str) -> BatchOutcome:
    results: list[bytes] = []
    outcome: BatchOutcome = {
        "results": results,
        "end": None,
        "error": None,
        "error_kind": None,
        "elapsed": 0.0,
        "worker": where,
    }
    try:
        for event in runner.events():
            if isinstance(event, ResultEvent):
                results.append(event.line)
                if live is not None:
                    live.add(event.line)
            elif isinstance(event, Ended):
                outcome["end"] = event.record
    except RunnerError as exc:  # no journal, a validated file: no other error can come
        outcome["error"] = exc.message
        outcome["error_kind"] = exc.fatal_kind or "runner"
    outcome["elapsed"] = time.monotonic() - started
    return outcome


def _watch(live: _Live, key_state: _KeyState, worker: Any) -> None:
    """Stop the batch's runner once its future is no longer wanted, and send its new
    results every ``PUBLISH_S`` (see the module)."""
    published_at = time.monotonic()
    while not live.finished.wait(WATCH_S):
        if not key_state.wanted():
            live.apply("stop", [])
            return
        if time.monotonic() - published_at >= PUBLISH_S:
            published_at = time.monotonic()
            live.publish(worker)


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

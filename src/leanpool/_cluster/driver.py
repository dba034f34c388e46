"""The cluster driver: a run on a Dask cluster behind the protocol a local run speaks.

The caller starts it instead of the lean runner when a run names a cluster; it reads
the same config, the same task file or spool and the same control channel on stdin,
and writes the same records on stdout, so ``TaskRunner``, the CLI, asyncio, calls, the
journal and resume work unchanged.  The Dask client lives here, not in the big caller.

It reads tasks as the lean runner does (``Intake``: validation, resume, the control
channel), groups them into batches (``BatchSizer``), submits each as one Dask task
(``run_batch``, which runs it with the lean runner on its worker), and, as each batch
comes back, journals and sends its results (``Outbox``: journal first, order kept).

One loop in the main thread owns all of the run's state; other threads only put
events on its queue: the stdin reader (control bytes), Dask's done callbacks (a batch
came back), the early-results thread (result lines of batches still running, asked for
every ``EARLY_POLL_S``), signal handlers.  Phases, as in the lean runner::

    RUNNING ──halt──► DRAINING ──(no batch in flight)──► end
       └──signal, caller gone, halt now, cluster lost──► STOPPING ──(same)──► end

- ``RUNNING``: batches are submitted while fewer than ``PER_THREAD`` per worker thread
  are in flight and the input has tasks.
- ``DRAINING``: every batch of the run was told ``halt``: running tasks finish, nothing
  new starts; their results are recorded.
- ``STOPPING``: every batch was told ``stop`` (their runners kill their tasks); what
  they finished before is recorded until ``STOP_WAIT_S``, then the rest is cancelled.

Exactly one record per id: a batch's results come back once, with its future; a batch
whose worker died is run again by Dask (its commands may then start twice: at-least-once
execution), and after ``allowed-failures`` deaths (``KilledWorker``) it is split into
single tasks, each retried alone, so that one task that kills its worker fails alone.
"""

from __future__ import annotations

import binascii
import collections
import contextlib
import enum
import json
import logging
import os
import queue
import secrets
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from .._errors import TaskFileError
from .._protocol.journal import Journal
from .._protocol.records import PROTOCOL_VERSION, RUN_TOKEN_ENV, encode_line
from .._protocol.tasks import CallTask
from .._runner.cancels import PendingCancels
from .._runner.halts import Halts
from .._runner.intake import Intake
from .._runner.main import run_main
from .._runner.outbox import Outbox
from .._runner.reports import InputReports, end_record, fatal_record
from .._runner.results import Built, cancelled_result
from .batch import BatchSpec, ProtocolMismatch, control, run_batch, take_early
from .sizing import PER_THREAD, BatchSizer

if TYPE_CHECKING:
    from distributed import Client, Future

    from .._protocol.config import ClusterConfig, Options, RunnerConfig
    from .._protocol.records import (
        EndRecord,
        FatalKind,
        FatalRecord,
        ResultRecord,
        StartRecord,
    )
    from .._protocol.tasks import Task
    from .batch import BatchOutcome, Control, EarlyLines

__all__ = ["EARLY_POLL_S", "LOST_AFTER_S", "STOP_WAIT_S", "ClusterDriver", "main"]

EARLY_POLL_S: Final = 0.25
"""How often the driver asks the workers for the results their running batches got
(``take_early``), per 16 workers: each request opens a connection to every worker."""

COMM_RETRIES: Final = 10
"""Batches in a row that may fail for a lost connection before the run fails with it."""

LOST_AFTER_S: Final = 5.0
"""Seconds without a scheduler before the run ends with a ``cluster`` error (Dask's
client tries to reconnect meanwhile)."""

STOP_WAIT_S: Final = 2.0
"""Seconds a stopped run waits for its batches to report what they finished: their
runners kill their tasks within 0.5 s."""

_TICK_S: Final = 0.5
"""Most seconds between two looks at the cluster (its threads, its scheduler) and the
journal's sync, when no event comes."""

_CALL_TIMEOUT_S: Final = 2.0
"""Most seconds the loop waits on one request to the cluster (its threads, a control,
the early results): a scheduler going away must not hold it for Dask's connect timeout
(30 s), since the loop is what notices that it is gone."""


class Phase(enum.Enum):
    """Where the run is; see the module docstring."""

    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"


class _Batch:
    """One batch in flight: its tasks in order, their seqs, and their lines' ids.

    ``by_id`` maps each task id to the positions holding it (ids need not be unique
    without a journal); a ``lines`` batch's runner numbers its tasks 1.. by position.
    """

    __slots__ = (
        "by_id",
        "delivered",
        "early",
        "future",
        "key",
        "lines",
        "lines_format",
        "seqs",
        "tasks",
    )

    def __init__(
        self, key: str, tasks: list[Task], seqs: list[int], lines: list[bytes], lines_format: bool
    ) -> None:
        self.key = key
        self.tasks = tasks
        self.seqs = seqs
        self.lines = lines
        self.lines_format = lines_format
        self.future: Future[BatchOutcome] | None = None
        self.delivered: set[int] = set()
        """Positions whose result was recorded (early, or from the outcome)."""
        self.early: set[bytes] = set()
        """Result lines that came early: the outcome repeats them."""
        self.by_id: dict[str | int, list[int]] = {}
        for index, task in enumerate(tasks):
            self.by_id.setdefault(task.id, []).append(index)

    def local_id(self, task_id: str | int) -> str | int | None:
        """The id the batch's runner knows this task by, or None if it is not here."""
        positions = self.by_id.get(task_id)
        if not positions:
            return None
        return positions[0] + 1 if self.lines_format else task_id

    def position(self, record: ResultRecord, line_base: int) -> int | None:
        """Which of the batch's tasks a result record is of; None when that task's
        result was recorded already (a batch run again after its worker died).

        ``line_base``: a ``lines`` run's runner numbers tasks by its own lines, of which
        it had read that many before this batch."""
        if self.lines_format:
            local = record["id"]
            index = local - 1 - line_base if type(local) is int else -1
            if not 0 <= index < len(self.tasks) or index in self.delivered:
                return None
        else:
            positions = self.by_id.get(record["id"])
            if not positions:
                return None
            index = positions.pop(0)
        self.delivered.add(index)
        return index

    def undelivered(self) -> list[tuple[Task, int, bytes]]:
        """The tasks whose result has not come, with their seqs and lines."""
        return [
            (task, seq, line)
            for index, (task, seq, line) in enumerate(
                zip(self.tasks, self.seqs, self.lines, strict=True)
            )
            if index not in self.delivered
        ]


class ClusterDriver:
    """One run on a cluster: the loop and its state.

    Invariants: ``inflight`` holds every batch submitted whose outcome has not been
    handled, by key; a task read from the input is in exactly one of: a batch in
    flight, ``split`` (single tasks waiting to be resubmitted), delivered (``completed``
    counts it), or dropped by a stop (it counts as unfinished).  ``halted``,
    ``stopped_by`` and ``fatal`` are how the run ended, set once each.
    """

    def __init__(self, config: RunnerConfig) -> None:
        cluster = config["cluster"]
        assert cluster is not None
        self.config = config
        self.cluster: ClusterConfig = cluster
        options = config["options"]
        self.options = options
        self.halts = Halts(options, config["halt_rule"])
        self.phase = Phase.RUNNING
        self.halted = False
        self.stopped_by: str | None = None
        self.fatal: tuple[FatalKind, str] | None = None
        self.bad_input: TaskFileError | None = None
        self.completed = 0
        self.failed = 0
        self.token = os.environ.get(RUN_TOKEN_ENV) or secrets.token_hex(8)
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.journal: Journal | None = None
        rerun_failed = options["resume_failed"]
        if options["journal"] is not None:
            self.journal = Journal(options["journal"], resume=options["resume"] or rerun_failed)
        self.intake = Intake(config["input"], self.journal, rerun_failed=rerun_failed)
        self.outbox = Outbox(select.epoll(), self.journal, ordered=config["ordered"])
        self.sizer = BatchSizer(self.cluster["parallel"])
        self.inflight: dict[str, _Batch] = {}
        self.split: list[tuple[Task, int, bytes]] = []
        self.requeued: collections.deque[tuple[Task, int, bytes]] = collections.deque()
        """Tasks of batches that failed on the way (the scheduler going, a connection
        lost), without a result: batched again before any new task."""
        self._comm_failures = 0
        """Batches in a row lost on the way: past ``COMM_RETRIES``, the run fails."""
        self.submitted = 0
        self.slots = PER_THREAD
        self._cancel_unread = PendingCancels(lambda task_id: False)  # a task is read once
        self._batch_options = _batch_options(options)
        self._batches = 0
        self.reports = InputReports(self.intake, self.outbox)
        self._stop_deadline: float | None = None
        self._lost_since: float | None = None
        self._next_look = 0.0
        self.client: Client | None = None
        self._local_cluster: Any = None
        self._scratch: str | None = None
        self._workers = 1
        self._polling = threading.Event()
        """Set while batches are in flight: the early-results thread asks then only."""
        self._poll_over = threading.Event()

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run to the end; 0 after an ``end`` record, 1 after a ``fatal`` one."""
        start: StartRecord = {"leanpool": "start", "protocol": PROTOCOL_VERSION}
        if not self.intake.stream:
            self.intake.validate()
            start["total"] = self.intake.tasks
            start["skipped"] = self.intake.skipped
        self._install_signals()
        try:
            self._connect()
        except _ClusterUnusable as exc:
            self.fatal = ("cluster", str(exc))
        else:
            self.outbox.control(encode_line(start))
            threading.Thread(target=self._read_stdin, name="leanpool-stdin", daemon=True).start()
            poller = threading.Thread(target=self._poll_early, name="leanpool-early", daemon=True)
            poller.start()
            try:
                self._loop()
            finally:
                self._poll_over.set()
                self._cancel_all()
                poller.join(5.0)
        self.outbox.release_held()
        self.outbox.control(encode_line(self._last_record()))
        if self.journal is not None:
            self.journal.close()
        with contextlib.suppress(BrokenPipeError):
            self.outbox.flush(final=True)
        self._disconnect()
        caller_gone = self.intake.caller_gone or self.outbox.caller_gone
        if caller_gone and not self.intake.stop_asked and self.config["cleanup_dir"]:
            shutil.rmtree(self.config["cleanup_dir"], ignore_errors=True)
        return 1 if self.fatal is not None or self.bad_input is not None else 0

    def _loop(self) -> None:
        while True:
            if self.phase is Phase.RUNNING:
                self._fill()
                self.reports.skipped()
            if not self.inflight and not self.split and not self.requeued and self._over():
                return
            self.outbox.flush(final=True)
            if self.outbox.caller_gone:
                self._stop(by="caller")
            if self.inflight:
                self._polling.set()
            else:
                self._polling.clear()
            try:
                event = self.events.get(timeout=self._wait_s())
            except queue.Empty:
                event = None
            while event is not None:
                self._on_event(*event)
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    event = None
            self._look_around()

    def _wait_s(self) -> float:
        wait = max(0.0, self._next_look - time.monotonic())
        if self._stop_deadline is not None:
            wait = min(wait, max(0.0, self._stop_deadline - time.monotonic()))
        return wait

    def _over(self) -> bool:
        """With nothing in flight: is the run over?  Say ``idle`` when input may grow."""
        if self.phase is not Phase.RUNNING:
            return True
        if self.intake.exhausted:
            return True
        self.reports.idle()
        return False

    # -- events ----------------------------------------------------------------------------

    def _on_event(self, kind: str, value: Any) -> None:
        if kind == "done":
            self._on_batch(value)
        elif kind == "fetched":
            self._on_outcome(*value)
        elif kind == "early":
            self._on_early(value)
        elif kind == "control":
            self._on_control(value)
        elif kind == "signal":
            self._stop(by=value)

    def _on_control(self, data: bytes) -> None:
        intake = self.intake
        intake.take_control(data)
        while intake.cancels:
            self._cancel(*intake.cancels.pop(0))
        if intake.halt_asked and not self.halted:
            self._halt(now=False)
        if intake.caller_gone or intake.stop_asked:
            self._stop(by="caller")

    def _read_stdin(self) -> None:
        """The stdin thread: control bytes to the loop, ``b""`` at EOF."""
        while True:
            try:
                data = os.read(0, 1 << 16)
            except OSError:
                data = b""
            self.events.put(("control", data))
            if not data:
                return

    def _poll_early(self) -> None:
        """The early-results thread: while batches are in flight, ask every worker for
        what its running batches got (``take_early``), and hand it to the loop."""
        client = self.client
        assert client is not None
        while not self._poll_over.wait(EARLY_POLL_S * max(1.0, self._workers / 16)):
            if not self._polling.is_set() or client.status != "running":
                continue
            try:
                answers = client.run(
                    take_early, self.token, on_error="ignore", callback_timeout=_CALL_TIMEOUT_S
                )
            except Exception:  # the scheduler going away: the loop sees it
                continue
            for taken in answers.values():
                for early in taken:
                    self.events.put(("early", early))

    def _install_signals(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            self.events.put(("signal", signal.Signals(signum).name))

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, on_signal)

    def _look_around(self) -> None:
        """Now and then: how many threads the cluster has, whether its scheduler is
        still there, the journal's sync; and a stopped run's deadline."""
        now = time.monotonic()
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._cancel_all()
            return
        if now < self._next_look:
            return
        self._next_look = now + _TICK_S
        if self.journal is not None:
            self.journal.sync()
        client = self.client
        assert client is not None
        if client.status == "running":
            self._lost_since = None
            with contextlib.suppress(Exception):  # a scheduler going away: seen next time
                nthreads = client.nthreads(callback_timeout=_CALL_TIMEOUT_S)
                self._workers = max(1, len(nthreads))
                self.slots = max(1, PER_THREAD * sum(nthreads.values()))
            return
        if self._lost_since is None:
            self._lost_since = now
        elif now - self._lost_since >= LOST_AFTER_S and self.fatal is None:
            _warn(f"lost the scheduler at {self._address()}: stopping")
            self._fail("cluster", f"lost the scheduler at {self._address()}")
            self._cancel_all()

    # -- batches ---------------------------------------------------------------------------

    def _fill(self) -> None:
        """Submit batches while slots are free and the input has tasks (and the scheduler
        is there: without it, a submit would wait for Dask's connect timeout)."""
        client = self.client
        while len(self.inflight) < self.slots and client is not None and client.status == "running":
            if self.split:
                task, seq, line = self.split.pop(0)
                self._submit([task], [seq], [line])
                continue
            left = None
            if not self.intake.stream:
                left = self.intake.tasks - self.intake.skipped - self.submitted
            size = self.sizer.next_size(left=left, threads=max(1, self.slots // PER_THREAD))
            tasks: list[Task] = []
            seqs: list[int] = []
            lines: list[bytes] = []
            requeued = self.requeued
            while requeued and len(tasks) < size:
                task, seq, line = requeued.popleft()
                tasks.append(task)
                seqs.append(seq)
                lines.append(line)
            while len(tasks) < size:
                try:
                    fresh = self.intake.next_task()
                except TaskFileError as exc:
                    self.bad_input = exc
                    _warn(f"{exc}: starting no more tasks")
                    self._halt(now=False, halted=False)
                    break
                if fresh is None:
                    break
                task, seq = fresh
                if self._cancel_unread.pending and self._cancel_unread.meets(
                    task.id, retry=False, consumed=self.intake.consumed
                ):
                    self._deliver(cancelled_result(task.id, 1), seq, task)
                    continue
                tasks.append(task)
                seqs.append(seq)
                lines.append(self._line_of(task, self.intake.last_raw))
            if not tasks:
                return
            self._submit(tasks, seqs, lines)
            if self.phase is not Phase.RUNNING:
                return

    def _line_of(self, task: Task, raw: bytes) -> bytes:
        """A task's line as its batch carries it: as read, but with a call's pickled
        arguments inline (their file is the caller's, on this machine)."""
        if isinstance(task, CallTask) and task.payload_file is not None:
            record = json.loads(raw)
            with open(task.payload_file, "rb") as f:
                record["pickle"] = binascii.b2a_base64(f.read(), newline=False).decode()
            del record["pickle_file"]
            raw = encode_line(record)
        return raw

    def _submit(self, tasks: list[Task], seqs: list[int], lines: list[bytes]) -> None:
        from distributed import Variable

        client = self.client
        assert client is not None
        self._batches += 1
        key = f"leanpool-batch-{self.token}-{self._batches}"
        lines_format = self.config["input"]["format"] == "lines"
        batch = _Batch(key, tasks, seqs, lines, lines_format)
        spec: BatchSpec = {
            "protocol": PROTOCOL_VERSION,
            "token": self.token,
            "key": key,
            "format": self.config["input"]["format"],
            "tasks_at": _tasks_at(key),
            "options": self._batch_options,
            "parallel": self.cluster["parallel"],
            "slot_env": self.config["slot_env"],
        }
        data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        try:
            # The lines wait for the batch on the scheduler, out of the task (see
            # ``batch``): set before the batch can start, deleted once it is done with.
            # A request and its answer: bounded, so that a scheduler going away now
            # cannot hold the loop past the time it takes to call it lost.
            Variable(spec["tasks_at"], client=client).set(data, callback_timeout=LOST_AFTER_S)
            future = client.submit(run_batch, spec, key=key, pure=False)
        except Exception as exc:
            if self._lost_on_the_way(exc):
                # The scheduler is going away: submit these again once it is back, or
                # the run ends as lost (``_look``) and a resume runs them.
                self.requeued.extendleft(reversed(list(zip(tasks, seqs, lines, strict=True))))
                return
            self._fail("cluster", f"cannot submit to the scheduler at {self._address()}: {exc}")
            return
        batch.future = future
        self.inflight[key] = batch
        self.submitted += len(tasks)
        future.add_done_callback(lambda _f, key=key: self.events.put(("done", key)))

    def _on_batch(self, key: str) -> None:
        """A batch's future is done: fetch its outcome, in a thread of its own.

        Not here: the outcome comes from the worker that holds it, and with the cluster
        going away a fetch waits for Dask's connect timeout, while this loop is what
        must notice that the scheduler is gone (``_look_around``).  A daemon thread, so
        that a fetch still waiting cannot hold the driver's exit.
        """
        batch = self.inflight.get(key)
        if batch is None or batch.future is None:
            return
        future = batch.future
        if future.cancelled():
            self.inflight.pop(key, None)
            self._forget_tasks([key])
            return

        def fetch() -> None:
            try:
                self.events.put(("fetched", (key, future.result(), None)))
            except BaseException as exc:  # the loop decides what it means
                self.events.put(("fetched", (key, None, exc)))

        threading.Thread(target=fetch, name="leanpool-fetch", daemon=True).start()

    def _on_outcome(
        self, key: str, outcome: BatchOutcome | None, exc: BaseException | None
    ) -> None:
        """A batch's outcome came: record its results, or act on why it failed."""
        batch = self.inflight.pop(key, None)
        if batch is None:  # let go of meanwhile (the run stopped)
            return
        self._forget_tasks([key])
        if isinstance(exc, ProtocolMismatch):
            self._fail("cluster", f"a worker cannot run this run's batches: {exc}")
            return
        if exc is not None:
            if not isinstance(exc, Exception):
                raise exc
            self._batch_failed(batch, exc)
            return
        assert outcome is not None
        self._comm_failures = 0
        self.sizer.observe(len(batch.tasks), outcome["elapsed"])
        early = batch.early
        base = outcome["line_base"]
        for line in outcome["results"]:
            if line not in early:
                self._take(batch, line, base)
        if outcome["error"] is not None:
            kind: FatalKind = "worker" if outcome["error_kind"] == "worker" else "cluster"
            self._fail(kind, f"on {outcome['worker']}: {outcome['error']}")

    def _on_early(self, early: EarlyLines) -> None:
        """Result lines a running batch handed over ahead of its outcome."""
        batch = self.inflight.get(early["key"])
        if batch is None:  # its outcome came first, with these lines
            return
        base = early["line_base"]
        for line in early["lines"]:
            batch.early.add(line)
            self._take(batch, line, base)

    def _take(self, batch: _Batch, line: bytes, line_base: int) -> None:
        """Record one result line of a batch, unless its task has its result already."""
        record: ResultRecord = json.loads(line)
        index = batch.position(record, line_base)
        if index is None:
            return
        task = batch.tasks[index]
        if batch.lines_format:
            record["id"] = task.id
        self._deliver(Built(record), batch.seqs[index], task)

    def _batch_failed(self, batch: _Batch, exc: BaseException) -> None:
        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            left = batch.undelivered()
            if len(left) > 1:  # find the task that kills its worker: one at a time
                _warn(f"workers died running a batch of {len(left)}: retrying each alone")
                self.split.extend(left)
                self.submitted -= len(left)
                return
            if not left:
                return
            task, seq, _ = left[0]
            record: ResultRecord = {
                "id": task.id,
                "status": -9,
                "ok": False,
                "duration": 0.0,
                "stdout": "",
                "stderr": "",
                "error": f"its Dask worker died each time it ran ({exc})",
            }
            self._deliver(Built(record), seq, task)
            return
        if self.client is not None and self.client.status != "running":
            self._fail("cluster", f"lost the scheduler at {self._address()}")
            return
        if self._lost_on_the_way(exc):  # its tasks without a result go again
            left = batch.undelivered()
            self.requeued.extend(left)
            self.submitted -= len(left)
            return
        self._fail(
            "cluster",
            "the cluster cannot run leanpool's batches (the scheduler and every worker "
            f"need the same leanpool: pip install 'leanpool[dask]'): {_root_cause(exc)}",
        )

    def _lost_on_the_way(self, exc: BaseException) -> bool:
        """Whether a batch failed for a connection (the scheduler going away, a worker's
        link lost), not for what it runs: its tasks then go again, up to
        ``COMM_RETRIES`` batches in a row (a scheduler that is gone is seen by ``_look``)."""
        if not _is_connection_error(exc):
            return False
        self._comm_failures += 1
        return self._comm_failures <= COMM_RETRIES

    def _deliver(self, built: Built, seq: int, task: Task) -> None:
        """Journal, count and send one result; halt when the run's rule says so (``Halts``)."""
        if self.journal is not None:
            assert built.record is not None  # the driver's results are records, not lines
            record = built.record.copy()
            record["task"] = task.digest
            built.journal = record
        self.outbox.result(built, seq)
        self.completed += 1
        if not built.ok:
            self.failed += 1
        if self.halts.rule is not None and not self.halted:
            halt = self.halts.after(self.completed, self.failed)
            if halt is not None:
                _warn(halt.reason)
                self._halt(now=halt.now)

    # -- stopping --------------------------------------------------------------------------

    def _cancel(self, task_id: str | int, before: int | None) -> None:
        for batch in self.inflight.values():
            local = batch.local_id(task_id)
            if local is not None:
                self._tell(batch.key, "cancel", [local])
                return
        self._cancel_unread.add(task_id, before, self.intake.consumed)

    def _halt(self, *, now: bool, halted: bool = True) -> None:
        """Start no more batches; every batch in flight starts no more tasks (``now``:
        kills its running ones too)."""
        if halted:
            self.halted = True
        if now:
            self._stop(by=None)
            return
        if self.phase is Phase.RUNNING:
            self.phase = Phase.DRAINING
            self.split.clear()
            self.requeued.clear()
            self._tell(None, "halt", [])

    def _stop(self, *, by: str | None) -> None:
        """Start nothing more; every batch kills its tasks and reports what finished."""
        if by is not None and self.stopped_by is None:
            self.stopped_by = by
        if self.phase is Phase.STOPPING:
            return
        self.phase = Phase.STOPPING
        self.split.clear()
        self.requeued.clear()
        self._stop_deadline = time.monotonic() + STOP_WAIT_S
        self._tell(None, "stop", [])

    def _fail(self, kind: FatalKind, message: str) -> None:
        """End the run with one fatal record (the caller reports it), once the batches
        in flight have stopped and reported."""
        if self.fatal is None:
            self.fatal = (kind, message)
        self._stop(by=None)

    def _tell(self, key: str | None, what: Control, ids: list[str | int]) -> None:
        """Push a control to the run's batches on every worker (``batch.control``)."""
        client = self.client
        if client is None or client.status != "running":
            return
        try:
            client.run(
                control,
                self.token,
                key,
                what,
                ids,
                on_error="ignore",
                callback_timeout=_CALL_TIMEOUT_S,
            )
        except Exception as exc:  # the scheduler going away: the loop sees it
            _warn(f"could not reach the workers ({type(exc).__name__}: {exc})")

    def _cancel_all(self) -> None:
        """Let go of every batch still in flight: their workers stop their runners."""
        futures = [b.future for b in self.inflight.values() if b.future is not None]
        self._forget_tasks(list(self.inflight))
        self.inflight.clear()
        self.split.clear()
        self.requeued.clear()
        self._stop_deadline = None
        if futures and self.client is not None:
            with contextlib.suppress(Exception):
                self.client.cancel(futures)

    def _forget_tasks(self, keys: list[str]) -> None:
        """Delete the variables holding these batches' lines (a message, no wait)."""
        client = self.client
        if client is None or client.status != "running":
            return
        from distributed import Variable

        for key in keys:
            with contextlib.suppress(Exception):
                Variable(_tasks_at(key), client=client).delete()

    # -- the cluster -----------------------------------------------------------------------

    def _address(self) -> str:
        return self.cluster["address"]

    def _connect(self) -> None:
        """Reach the scheduler (or start ``local:N``).

        Raises:
            _ClusterUnusable: it does not answer, or ``local:N`` cannot start.
        """
        try:
            from distributed import Client
        except ImportError as exc:
            raise _ClusterUnusable(
                f"dask distributed is not installed ({exc}): pip install 'leanpool[dask]'"
            ) from None
        # After the import, which sets Dask's own levels: its INFO chatter (a comm
        # closed, with a traceback) is not the caller's business.
        _quiet_dask(logging.ERROR)
        address = self._address()
        try:
            if address.startswith("local:"):
                self.client = self._start_local(address)
            else:
                # Outcomes come from the workers, not through the scheduler (whose
                # memory grew with every outcome it relayed), unless Dask's config says
                # otherwise (a driver that cannot reach the workers).  The connect
                # timeout is Dask's too.
                import dask

                direct = dask.config.get("distributed.client.direct-to-workers", None)
                self.client = Client(
                    address,
                    set_as_default=False,
                    direct_to_workers=True if direct is None else direct,
                )
        except _ClusterUnusable:
            raise
        except Exception as exc:
            raise _ClusterUnusable(
                f"cannot reach the Dask scheduler at {address}: {type(exc).__name__}: {exc}"
            ) from None
        with contextlib.suppress(Exception):
            nthreads = self.client.nthreads()
            self._workers = max(1, len(nthreads))
            self.slots = max(1, PER_THREAD * sum(nthreads.values()))

    def _start_local(self, address: str) -> Client:
        from distributed import Client, LocalCluster

        count = address.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise _ClusterUnusable(f"local:N needs a number of workers >= 1, not {count!r}")
        # Its processes inherit an ignored SIGINT: a Ctrl-C reaches the whole foreground
        # process group, and the driver, not each worker, decides what it means.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Its scratch space is the run's, removed with the cluster.
        self._scratch = tempfile.mkdtemp(prefix="leanpool-dask-")
        import dask

        dask.config.set({"temporary-directory": self._scratch})
        # Its workers log to the CLI's stderr; what goes wrong in a batch comes back in
        # its outcome, and their own complaints while the cluster closes are noise.
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "critical"
        try:
            self._local_cluster = LocalCluster(
                n_workers=int(count),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                scheduler_port=0,
                # No dashboard (bokeh is not installed); its HTTP server on a free
                # port of the loopback, so that a busy 8787 does not warn.
                dashboard_address="127.0.0.1:0",
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        return Client(self._local_cluster, set_as_default=False, direct_to_workers=True)

    def _disconnect(self) -> None:
        self._tell(None, "finish", [])  # the workers' idle runners of this run end now
        # What Dask says while it closes (a reconnect to a scheduler that went away,
        # cancelled: a traceback) is not the caller's business; the run's one error is.
        _quiet_dask(logging.CRITICAL)
        with contextlib.suppress(Exception):
            if self.client is not None:
                self.client.close(timeout=2)
        with contextlib.suppress(Exception):
            if self._local_cluster is not None:
                self._local_cluster.close(timeout=3)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    # -- the last record -------------------------------------------------------------------

    def _last_record(self) -> EndRecord | FatalRecord:
        if self.bad_input is not None:
            return fatal_record("task_file", str(self.bad_input), bad_line=self.bad_input)
        if self.fatal is not None:
            return fatal_record(*self.fatal)
        return end_record(
            self.intake,
            completed=self.completed,
            failed=self.failed,
            halted=self.halted,
            stopped_by=self.stopped_by,
        )

    def abandon(self) -> None:
        """After an unexpected failure: let go of the batches, and of the cluster."""
        self._cancel_all()
        self._disconnect()


class _ClusterUnusable(Exception):
    """The cluster cannot be reached or started: the run's one ``cluster`` error."""


def _tasks_at(key: str) -> str:
    """The name of the variable holding a batch's lines."""
    return f"{key}-tasks"


def _batch_options(options: Options) -> Options:
    """The run's options as each batch's runner takes them: the journal, resume and
    halts are the driver's, across batches."""
    batch = dict(options)
    batch.update(journal=None, resume=False, resume_failed=False, halt=None, halt_now=False)
    return batch  # type: ignore[return-value]


def _quiet_dask(level: int) -> None:
    """Dask's loggers at level or above only (its config sets some of them apart)."""
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name.split(".")[0] == "distributed":
            logging.getLogger(name).setLevel(level)


def _is_connection_error(exc: BaseException) -> bool:
    """Whether a connection failing is in exc's chain (Dask's ``CommClosedError`` is an
    ``OSError``; so are ``ConnectionResetError`` and friends), or a wait for one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (OSError, TimeoutError)):
            return True
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return False


def _root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain, said in one line: Dask wraps the one that
    tells (``No module named 'leanpool'``) in its own."""
    while exc.__cause__ is not None or (
        exc.__context__ is not None and not exc.__suppress_context__
    ):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    first = str(exc).strip().splitlines()[:1]
    return f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": ")


def _warn(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"leanpool cluster: {message}\n".encode(errors="replace"))


def main(argv: list[str]) -> int:
    """Run the tasks the JSON config in argv[0] describes on its cluster."""
    return run_main(argv, ClusterDriver)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

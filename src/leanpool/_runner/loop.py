"""The runner's event loop: one epoll set, a phase, and named steps.

Each turn of the loop: act on a stop signal; start tasks while there are free slots
(``RUNNING`` only); decide whether the run is over, or idle; send the caller what it can
take; wait for an event or the next deadline; route each event to its owner (a child,
the control channel, the signal pipe, stdout); fire the deadlines that are due.  It
never sleeps on a tick: every wake-up is an event or a deadline.

Phases, and what moves the run from one to the next::

    RUNNING ──halt──────────────────► DRAINING ──(nothing runs)──► end
       │  └──bad streamed line──────►    │
       │                                 │ signal, caller gone, halt now
       └──signal, caller gone, halt now──┴──► STOPPING ──(nothing runs)──► end

- ``RUNNING``: tasks start as slots free and input allows.
- ``DRAINING``: nothing new starts; running tasks finish and report.
- ``STOPPING``: every running group got SIGTERM (SIGKILL after ``INTERRUPT_GRACE_S``);
  their results are not wanted; the run ends once they are reaped.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import os
import resource
import select
import signal
import time
from typing import TYPE_CHECKING, Final

from .._errors import TaskFileError
from .._protocol.journal import Journal
from .._protocol.records import PROTOCOL_VERSION, encode_line
from .._protocol.tasks import CommandTask
from .calls import WorkerPool
from .cancels import PendingCancels
from .children import Child
from .halts import Halts
from .intake import Intake
from .kinds import CHILD_KINDS
from .leftovers import Leftovers
from .outbox import OUTPUT_BACKLOG, Outbox
from .piped import (
    PipedChild,
    file_checker,
    line_parser,
    make_engine,
    start_piped,
)
from .reaping import pidfds_work, reap_ready, signal_group
from .reports import InputReports, end_record, fatal_record
from .results import (
    cancelled_result,
    plain_lines,
    result_of,
    signal_name,
    unstarted_result,
)
from .schedule import Attempt, Schedule
from .spawn import SpawnError, devnull
from .timers import Timers, When

if TYPE_CHECKING:
    from .._protocol.config import RunnerConfig
    from .._protocol.records import EndRecord, FatalRecord, StartRecord
    from .._protocol.tasks import Task
    from .children import Watcher
    from .piped import Engine, Poller
    from .results import Built
    from .spawn import Environ

__all__ = ["INTERRUPT_GRACE_S", "Phase", "Runner"]

INTERRUPT_GRACE_S: Final = 0.5
"""Seconds between SIGTERM and SIGKILL when the whole run is stopped (Ctrl-C, caller gone,
halt now): short, because whoever stopped the run is waiting for it to end."""

EXIT_WATCH_AFTER_S: Final = 0.05
"""How long a task runs before its main process's exit is watched through a pidfd.

A task's exit is nearly always seen as EOF on its pipes, and one waitpid then reaps it.
Only a task that leaves a process holding its pipes (``sleep 60 & echo started``) needs
its exit watched apart, so that its slot frees when it ends.  A pidfd costs four system
calls; most tasks of a big batch end well before this, and never pay them.  A task that
leaves its pipes to a leftover is seen to end at most this much later."""

_LEFTOVER_PROBE_S: Final = 0.01
"""How often, once nothing else runs, to look whether leftover groups obeyed SIGTERM
before their SIGKILL is due: only then, and only while such a group exists."""

EPOLLIN: Final = select.EPOLLIN


class Phase(enum.Enum):
    """Where the run is; see the module docstring."""

    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"


class Runner:
    """One run: the loop and its state.

    Invariants: ``active`` maps the pid of every started, unfinished child to it (a
    call's pid is its worker's, which runs one call at a time); ``by_fd`` maps every
    watched descriptor to its owner (a child, or a worker); a child leaves ``active`` in
    ``_complete``, after which it holds no descriptor.  ``completed`` counts results
    delivered, ``failed`` those of them not ok.  ``halted``, ``stopped_by`` and
    ``bad_input`` are how the run ended, set once each.
    """

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        options = config["options"]
        self.options = options
        self.phase = Phase.RUNNING
        self.halted = False
        self.stopped_by: str | None = None
        self.bad_input: TaskFileError | None = None
        self.worker_failure: str | None = None
        self.completed = 0
        self.failed = 0
        # What the Host protocol offers children; the engine is also the loop's epoll set.
        self.pidfds = pidfds_work()
        self.base_env: Environ = dict(os.environb)  # encoded once: spawns take it as is
        self.engine = make_engine(
            devnull(), self.base_env, options["max_output"], pidfds=self.pidfds
        )
        self.epoll: Poller = self.engine if self.engine is not None else select.epoll()
        self.active: dict[int, Child] = {}
        self.by_fd: dict[int, Watcher] = {}
        self.timers: Timers[object] = Timers()
        self.schedule = Schedule(
            self.timers,
            parallel=options["parallel"],
            retries=options["retries"],
            retry_delay=options["retry_delay"],
        )
        self.journal: Journal | None = None
        if options["journal"] is not None:
            rerun_failed = options["resume_failed"]
            self.journal = Journal(options["journal"], resume=options["resume"] or rerun_failed)
        self.intake = Intake(
            config["input"],
            self.journal,
            rerun_failed=options["resume_failed"],
            parse=line_parser(config["input"]["format"]),
            check=line_parser(config["input"]["format"], check_only=True),
            check_file=file_checker(config["input"]["format"]),
        )
        self.outbox = Outbox(self.epoll, self.journal, ordered=config["ordered"])
        self.reports = InputReports(self.intake, self.outbox)
        self._exit_sweep_due = False
        self.leftovers = Leftovers(self.timers, self.active)
        self._signalled = 0
        self.home_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.max_output = options["max_output"]
        self.output_dir = options["output_dir"]
        self.output_names: dict[str, int] = {}
        self.slot_env = config["slot_env"]
        self.halts = Halts(options, config["halt_rule"])
        self._free_slots = list(range(options["parallel"], 0, -1))
        self.spill_dir = config["spill_dir"]
        self._timeout = options["timeout"]
        self._workers: WorkerPool | None = None
        self._cancelled = PendingCancels(lambda task_id: task_id in self.schedule.retrying)
        self._piped_lane = (
            self.engine is not None and self.output_dir is None and self.slot_env is None
        )
        """Whether a command with no stdin and no env of its own goes straight to the engine
        (``start_piped``), as ``shell.start_shell`` would send it, without its layer."""

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run to the end; 0 after an ``end`` record, 1 after a ``fatal`` one."""
        # What start-up made (modules, code, constants) lives as long as the runner:
        # out of the collector's sight, its full collections look at the run's objects.
        gc.freeze()
        self._install_signals()
        start: StartRecord = {
            "leanpool": "start",
            "protocol": PROTOCOL_VERSION,
            "engine": "python" if self.engine is None else "c",
        }
        if not self.intake.stream:
            self.intake.validate()
            start["total"] = self.intake.tasks
            start["skipped"] = self.intake.skipped
        self._raise_fd_limit()
        self.outbox.control(encode_line(start))
        try:
            self._loop()
        finally:
            self._kill_all()
        self.outbox.release_held()
        if self.bad_input is not None or self.worker_failure is not None:
            self.outbox.control(encode_line(self._fatal_record()))
        else:
            self.outbox.control(encode_line(self._end_record()))
        if self.journal is not None:
            self.journal.close()
        self.outbox.flush(final=True)
        # A caller that asked to stop lives on, though it closed the pipe we write to.
        caller_gone = self.intake.caller_gone or self.outbox.caller_gone
        if caller_gone and not self.intake.stop_asked and self.config["cleanup_dir"]:
            _remove_dir(self.config["cleanup_dir"])
        return 1 if self.bad_input is not None or self.worker_failure is not None else 0

    def _loop(self) -> None:
        poll = self.epoll.poll
        by_fd = self.by_fd
        outbox = self.outbox
        engine = self.engine
        while True:
            if self._signalled:
                self._on_signal()
            if engine is not None and engine.finished:
                self._take_finished(engine)
            if self.phase is Phase.RUNNING:
                self._fill()
                if self.journal is not None:  # only a journal makes tasks skipped
                    self.reports.skipped()
            wait = self.timers.wait_s()
            if not self.active and self._over():
                if not self.leftovers.remain():
                    return
                # Only leftovers that got SIGTERM are left: look again shortly whether
                # they obeyed, while results, signals and the caller are still served.
                wait = _LEFTOVER_PROBE_S if wait < 0 else min(wait, _LEFTOVER_PROBE_S)
            if outbox.backlog:
                outbox.flush()
                if outbox.caller_gone:
                    self._caller_gone()
                    continue
            ready = poll(wait)
            if engine is not None and engine.finished:
                # Reaped in that poll: complete them before the loop's own events are
                # acted on, since a stop or a cancel among them would take a command
                # that ended for a running one (and signal the group of a reaped leader).
                self._take_finished(engine)
            for fd, events in ready:
                owner = by_fd.get(fd)
                if owner is not None:
                    owner.on_event(fd, events)
                    if owner.done:  # only a Child is ever done
                        self._complete(owner)  # type: ignore[arg-type]
                elif fd == self.wake_r:
                    self._on_wake()
                elif fd == 0:
                    self._on_control()
                elif fd == 1:
                    outbox.flush()
            if engine is not None and engine.finished:  # SIGCHLD's reaping, an abandon
                self._take_finished(engine)
            if self.timers.next_at <= time.monotonic():
                self._fire_deadlines()

    def _take_finished(self, engine: Engine) -> None:
        """The commands the engine saw end (reaped, pipes closed): complete each.

        The plain success takes the short way: a first attempt that exited 0 on its own,
        its output whole and small enough to go inline, with no job slot, in a run whose
        halt rule never needs to see a success (``Halts.sees_successes``).  Its line,
        encoded in C, goes to the journal and the outbox; it is what ``result_of`` would
        build, tested so.  Every other end goes through ``_complete``, as any kind of
        child's does.
        """
        active = self.active
        short = not self.halts.sees_successes
        journal = self.journal
        spill_dir = self.spill_dir
        now = time.monotonic()  # each of them was reaped in the poll that just ended
        for pid, status, stdout, stderr, flags in engine.take_finished():
            child = active.get(pid)
            if type(child) is not PipedChild:
                continue
            lines = None
            if short and not (status or flags or child.slot or child.abandoned):
                digest = child.task.digest if journal is not None else None
                lines = plain_lines(child, 0, stdout, stderr, spill_dir, digest, now)
            if lines is None:
                child.ended(status, stdout, stderr, flags)
                self._complete(child)
                continue
            del active[pid]
            child.done = True
            self.outbox.line(lines[0], lines[1], child.seq)
            self.completed += 1

    def _over(self) -> bool:
        """With nothing running: is the run over?  Say ``idle`` when input may grow."""
        if self.phase is not Phase.RUNNING:
            return True
        if self.schedule.pending:
            return False
        if self.intake.exhausted:
            return True
        self.reports.idle()
        return False

    # -- starting --------------------------------------------------------------------------

    def _fill(self) -> None:
        """Start attempts while slots are free and the caller keeps up.

        A retry may start while ordered results wait for it (they count in the backlog,
        and only it can release them); a new task only while the whole backlog is
        under ``OUTPUT_BACKLOG``.
        """
        active = self.active
        schedule = self.schedule
        outbox = self.outbox
        while len(active) < schedule.parallel:
            if schedule.ready:
                if outbox.unsent >= OUTPUT_BACKLOG:
                    return
                waiting = schedule.ready.popleft()
                task, seq, attempt = waiting.task, waiting.seq, waiting.number
                schedule.taken(task.id)
            else:
                if outbox.backlog >= OUTPUT_BACKLOG:  # held results count too
                    return
                try:
                    fresh = self.intake.next_task()
                except TaskFileError as exc:
                    self._on_bad_input(exc)
                    return
                if fresh is None:
                    return
                task, seq = fresh
                attempt = 1
            if self._cancelled.pending and self._cancelled.meets(
                task.id, retry=attempt > 1, consumed=self.intake.consumed
            ):
                self._deliver(cancelled_result(task.id, attempt), seq, task)
                continue
            if not self._start(task, seq, attempt):
                return

    def _start(self, task: Task, seq: int, attempt: int) -> bool:
        """Start one attempt; False when the system is out of resources for now."""
        try:
            if (
                self._piped_lane
                and type(task) is CommandTask
                and task.stdin is None
                and task.env is None
            ):
                assert self.engine is not None  # _piped_lane says so
                child: Child = start_piped(self.engine, task, seq, attempt, self, None)
            else:
                child = CHILD_KINDS[type(task)](task, seq, attempt, self)
        except SpawnError as exc:
            self._unstarted(task, seq, attempt, exc.status, exc.message)
            return True
        except OSError as exc:  # EMFILE, ENFILE, EAGAIN, ENOMEM: out of resources
            verdict = self.schedule.out_of_resources(len(self.active))
            if verdict is False:  # nothing of ours holds it, and waiting did not help
                self._unstarted(task, seq, attempt, 126, f"cannot start: {exc.strerror}")
                return True
            self.schedule.ready.appendleft(Attempt(task, seq, attempt))
            if isinstance(verdict, str):
                _warn(f"{exc.strerror}: {verdict}")
            return False
        self.schedule.started()
        self.active[child.pid] = child
        if child.running and (self._timeout is not None or task.timeout is not None):
            self._arm_timeout(child)
        return True

    def _arm_timeout(self, child: Child) -> None:
        timeout = child.task.timeout
        if timeout is None:
            timeout = self._timeout
        if timeout is not None:
            self.timers.add(timeout, When.TERM, child)

    def _raise_fd_limit(self) -> None:
        # Each running task holds up to four descriptors (three pipes, a pidfd); raise the
        # soft limit only when the default would not do, since tasks inherit it.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 4 * self.schedule.parallel + 64
        if soft != resource.RLIM_INFINITY and soft < need:
            new = need if hard == resource.RLIM_INFINITY else min(need, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))

    # -- what children ask of the loop (the Host protocol) ----------------------------------

    @property
    def watched(self) -> dict[int, Watcher]:
        return self.by_fd

    def watch(self, fd: int, events: int, owner: Watcher) -> None:
        self.epoll.register(fd, events)
        self.by_fd[fd] = owner

    def unwatch(self, fd: int) -> None:
        self.epoll.unregister(fd)
        del self.by_fd[fd]

    def take_slot(self) -> int:
        # A retry may start while its task's slot is not yet free: then one past the end.
        return self._free_slots.pop() if self._free_slots else len(self.active) + 1

    def release_slot(self, slot: int) -> None:
        self._free_slots.append(slot)
        self._free_slots.sort(reverse=True)

    def began(self, child: Child) -> None:
        if self.active.get(child.pid) is child:
            self._arm_timeout(child)

    def attempt_over(self, child: Child) -> None:
        self._complete(child)

    def worker_pool(self) -> WorkerPool:
        if self._workers is None:
            options = self.options
            workers = self.config["workers"]
            workers["preload"] = options["preload"]
            workers["report_rss"] = options["max_worker_memory"] is not None
            self._workers = WorkerPool(
                self,
                workers,
                max_calls=options["max_tasks_per_worker"],
                max_memory=options["max_worker_memory"],
            )
        return self._workers

    def worker_failed(self, message: str) -> None:
        """A worker cannot work at all (its preload failed): end the run with one error,
        rather than start worker after worker."""
        if self.worker_failure is None:
            self.worker_failure = message
            _warn("a worker could not start: starting no more tasks")
            self._drain()

    def forget(self, fd: int) -> None:
        # Unregister before closing: closing our descriptor does not always remove it from
        # the epoll set.  A task started a moment ago may still hold a copy of it, since
        # the vfork parent resumes at exec_mmap, before the child closes its
        # close-on-exec descriptors; the registration would then outlive our close and
        # report a later pipe that reuses the number as hung up (it did, in the
        # benchmark: a few results in a thousand came back empty).
        try:  # noqa: SIM105  # not contextlib.suppress: this runs three times per task
            self.epoll.unregister(fd)
        except OSError:
            pass
        del self.by_fd[fd]
        os.close(fd)

    def after(self, delay: float, what: When, child: Child) -> None:
        self.timers.add(delay, what, child)

    def watch_exit_later(self, child: Child) -> None:
        if not self._exit_sweep_due and not child.exit_watched:
            self._exit_sweep_due = True
            self.timers.add(EXIT_WATCH_AFTER_S, When.WATCH_EXITS, None)

    def _watch_exits(self) -> None:
        """Watch the exits of the tasks that have run long enough to need it; come back
        for the others.  One deadline for all tasks, only while some need it."""
        self._exit_sweep_due = False
        now = time.monotonic()
        soonest = None
        for child in self.active.values():
            if child.done or child.exit_watched:
                continue
            due = child.started + EXIT_WATCH_AFTER_S
            if due <= now:
                child.watch_exit()
            elif soonest is None or due < soonest:
                soonest = due
        if soonest is not None:
            self._exit_sweep_due = True
            self.timers.add(soonest - now, When.WATCH_EXITS, None)

    def leftovers_found(self, child: Child) -> None:
        keep = child.task.kill_leftovers
        if keep is None:
            keep = self.options["kill_leftovers"]
        if not keep and not child.timed_out and not child.abandoned:
            return  # left behind on purpose
        grace = INTERRUPT_GRACE_S if child.abandoned else self.options["kill_grace"]
        self.leftovers.found(child.pid, grace)

    def _reap_exited(self) -> None:
        """SIGCHLD (no pidfds): finish every task of ours that exited."""
        active = self.active
        for pid, status in reap_ready():
            child = active.get(pid)
            if child is not None:
                child.on_exit(status)
                if child.done:
                    self._complete(child)
            elif self._workers is not None:
                self._workers.on_exit(pid, status)

    # -- events ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        if not self.pidfds:
            signal.signal(signal.SIGCHLD, _ignore_signal)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # A signal ignored by whoever started us stays ignored, as shells do.
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._on_stop_signal)
        if self.engine is not None:  # a command must not start with a handler of ours
            self.engine.note_handlers()
        self.epoll.register(wake_r, EPOLLIN)
        # EOF on stdin means the caller is gone; a stdin that is not a pipe cannot say so.
        with contextlib.suppress(OSError):
            self.epoll.register(0, EPOLLIN)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self._signalled = signum

    def _on_signal(self) -> None:
        name = signal_name(self._signalled)
        self._signalled = 0
        _warn(f"{name}: stopping every task")
        self._stop(by=name)

    def _on_wake(self) -> None:
        # One read: a byte per signal, and the pipe holds a few at most (more would
        # wake the loop again).  Reading on to EAGAIN cost an exception per wake-up.
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 4096)
        if self._signalled:
            self._on_signal()
        if not self.pidfds:  # SIGCHLD: some child exited
            self._reap_exited()

    def _on_control(self) -> None:
        intake = self.intake
        intake.on_control()
        while intake.cancels:
            self._cancel(*intake.cancels.pop(0))
        if intake.halt_asked and not self.halted:
            self.halted = True
            self._drain()
        if intake.closed:
            self.epoll.unregister(0)
        if intake.caller_gone or intake.stop_asked:
            self._caller_gone()

    def _cancel(self, task_id: str | int, before: int | None) -> None:
        """The caller cancelled a task: kill it if it runs, else never start it (with
        ``before``, only a task added before the cancel: see ``PendingCancels``)."""
        for child in self.active.values():
            if child.task.id == task_id and type(child.task.id) is type(task_id):
                if not (child.abandoned or child.cancelled or child.done):
                    child.cancelled = True
                    child.signal(signal.SIGTERM)
                    self.timers.add(INTERRUPT_GRACE_S, When.KILL, child)
                return
        self._cancelled.add(task_id, before, self.intake.consumed)

    def _caller_gone(self) -> None:
        """The caller is gone or asked to stop: stop (a run already stopped keeps its
        reason)."""
        if self.phase is not Phase.STOPPING or self.stopped_by is None:
            self._stop(by="caller")

    def _fire_deadlines(self) -> None:
        for deadline in self.timers.due():
            what = deadline.what
            subject = deadline.subject
            if what is When.RETRY:
                assert isinstance(subject, Attempt)
                self.schedule.retry_due(subject, stopping=self.phase is not Phase.RUNNING)
            elif what is When.KILL_LEFTOVERS:
                assert isinstance(subject, int)
                self.leftovers.grace_over(subject)
            elif what is When.WATCH_EXITS:
                self._watch_exits()
            elif what is not When.WAKE:  # WAKE only wakes the loop: _fill runs next
                assert isinstance(subject, Child)
                if subject.done or self.active.get(subject.pid) is not subject:
                    continue  # finished meanwhile
                if what is When.REAP:
                    subject.watch_exit()
                elif what is When.TERM:
                    subject.timed_out = not subject.abandoned
                    subject.signal(signal.SIGTERM)
                    grace = INTERRUPT_GRACE_S if subject.abandoned else self.options["kill_grace"]
                    self.timers.add(grace, When.KILL, subject)
                else:
                    subject.signal(signal.SIGKILL)

    # -- finishing -------------------------------------------------------------------------

    def _complete(self, child: Child) -> None:
        if self.active.get(child.pid) is not child:
            return  # completed already (a worker's exit told of it first)
        del self.active[child.pid]
        if child.slot:
            self._free_slots.append(child.slot)
            self._free_slots.sort(reverse=True)
        if child.abandoned:
            return
        outcome = child.outcome()
        ok = outcome.status == 0 and not child.timed_out
        if (
            not ok
            and not child.cancelled
            and self.phase is Phase.RUNNING
            and self.schedule.retry(child.task, child.seq, child.attempt)
        ):
            return
        digest = child.task.digest if self.journal is not None else None
        built = result_of(child, outcome, self.config["spill_dir"], digest)
        self._deliver(built, child.seq, child.task)

    def _unstarted(self, task: Task, seq: int, attempt: int, status: int, error: str) -> None:
        """The result of a task that could not start, unless it has retries left."""
        if self.phase is Phase.RUNNING and self.schedule.retry(task, seq, attempt):
            return
        self._deliver(unstarted_result(task.id, attempt, status, error), seq, task)

    def _deliver(self, built: Built, seq: int, task: Task) -> None:
        """Journal, count and send one final result; halt if it is one failure too many
        (``Halts``: the ``halt`` option, or a ``halt_rule``)."""
        if self.journal is not None and built.journal_line is None:
            # The journal's record says which task it was.
            record = built.record if built.journal is None else built.journal
            assert record is not None  # only an encoded Built has none, and its journal line
            record = record.copy()
            record["task"] = task.digest
            built.journal = record
        self.outbox.result(built, seq)
        self.completed += 1
        if not built.ok:
            self.failed += 1
        if self.halts.rule is not None and not self.halted:
            halt = self.halts.after(self.completed, self.failed)
            if halt is not None:
                self.halted = True
                _warn(halt.reason)
                if halt.now:
                    self._stop(by=None)
                else:
                    self._drain()

    def _on_bad_input(self, exc: TaskFileError) -> None:
        """A streamed line is bad: start nothing more, let running tasks finish."""
        self.bad_input = exc
        _warn(f"{exc}: starting no more tasks")
        self._drain()

    def _drain(self) -> None:
        if self.phase is Phase.RUNNING:
            self.phase = Phase.DRAINING
        self.schedule.clear()

    def _stop(self, *, by: str | None) -> None:
        """Start nothing more; signal every running group and drop its result.

        ``by``: the signal name or "caller" that stopped the run (None for a halt now).
        """
        if by is not None and self.stopped_by is None:
            self.stopped_by = by
        self.phase = Phase.STOPPING
        self.schedule.clear()
        self.leftovers.kill_all()  # they had their SIGTERM already
        for child in list(self.active.values()):
            if child.abandoned:
                continue
            child.abandon()
            child.signal(signal.SIGTERM)
            self.timers.add(INTERRUPT_GRACE_S, When.KILL, child)
            if child.done:
                self._complete(child)

    def _kill_all(self) -> None:
        """On the way out: no task group, and no worker, outlives the runner."""
        if self.engine is not None:  # those the engine reaped have no group to kill
            for pid, *_ in self.engine.take_finished():
                self.active.pop(pid, None)
        self.leftovers.kill_all()
        for pid in self.active:
            signal_group(pid, signal.SIGKILL)
        workers = self._workers
        if workers is not None:
            workers.kill_all()  # idle workers: their work is done
        deadline_at = time.monotonic() + 2.0
        while (self.active or (workers and workers.workers)) and time.monotonic() < deadline_at:
            for pid, _ in reap_ready():
                self.active.pop(pid, None)
                if workers is not None:
                    workers.reaped(pid)
            if self.active or (workers and workers.workers):
                time.sleep(0.002)  # children were just SIGKILLed

    def _end_record(self) -> EndRecord:
        return end_record(
            self.intake,
            completed=self.completed,
            failed=self.failed,
            halted=self.halted,
            stopped_by=self.stopped_by,
        )

    def _fatal_record(self) -> FatalRecord:
        if self.bad_input is None:
            assert self.worker_failure is not None
            return fatal_record("worker", f"a worker could not start: {self.worker_failure}")
        return fatal_record("task_file", str(self.bad_input), bad_line=self.bad_input)

    def abandon(self) -> None:
        """Nothing runs elsewhere: ``_kill_all`` has run on the way out."""


def _remove_dir(path: str) -> None:
    """Remove the caller's flat temporary directory (no shutil: the runner stays lean)."""
    try:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
    except OSError:
        pass


def _ignore_signal(_signum: int, _frame: object) -> None:
    """A Python-level SIGCHLD handler, so that the wakeup fd gets written."""


def _warn(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"leanpool runner: {message}\n".encode(errors="replace"))

"""Mutation testing of leanpool's guarantees: break one promise at a time, see a test fail.

Each mutant below is one deliberate bug, a single text change in ``src/``, named by the
guarantee it breaks.  For each, this script copies the checkout to a temporary directory,
applies the change, runs the suite there (unit and integration tests, stopping at the
first failure) and records whether a test caught it.  A mutant whose text is not found is
an error: the list must follow the code.

    .venv/bin/python tests/mutate.py                  # every mutant; about 15-30 minutes
    .venv/bin/python tests/mutate.py leftovers-kept   # only the mutants named
    .venv/bin/python tests/mutate.py --markdown docs/mutation.md
    .venv/bin/python tests/mutate.py cluster-no-watch --tests tests/integration/test_cluster.py

Why a curated list rather than mutmut or cosmic-ray: those generate thousands of
syntactic mutants, and each costs a run of a suite of real processes (about a minute
here); a list of semantic mutants, one per promise, runs in well under an hour and says
which promise is unguarded.  CI does not run it; each issue that touches a guarantee says
its count in its note.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PER_MUTANT_TIMEOUT_S = 420
"""A room's tests take 1-3 minutes here; a mutant that makes them run this long hangs."""
WHOLE_SUITE_TIMEOUT_S = 1500
"""The whole suite takes 5 minutes on an idle 2-core machine and over 10 under load: a
survivor's second run gets this long before it counts as hung."""
VERBOSE = False


@dataclass(frozen=True)
class Room:
    """A part of the code whose promises are counted together, and the tests that guard
    them: a mutant is first run against its room's tests (fast), and a survivor there
    against the whole suite, to tell a promise guarded elsewhere from one not guarded."""

    name: str
    tests: tuple[str, ...]


@dataclass(frozen=True)
class Mutant:
    name: str
    promise: str
    path: str
    old: str
    new: str
    room: Room | None = None


_I = "tests/integration/"
_U = "tests/unit/"
WHOLE_SUITE = ("tests/unit", "tests/integration")
JOURNAL = Room(
    "journal",
    (
        f"{_U}test_journal.py",
        f"{_U}test_rooms.py",
        f"{_I}test_journal_resume.py",
        f"{_I}test_guarantees.py",
        f"{_I}test_api.py",
    ),
)
STOPPING = Room(
    "stopping and killing",
    (
        f"{_I}test_faults.py",
        f"{_I}test_guarantees.py",
        f"{_I}test_streaming.py",
        f"{_I}test_chaos.py",
        f"{_I}test_cli.py",
    ),
)
LEFTOVERS = Room(
    "leftovers", (f"{_U}test_reaping.py", f"{_I}test_leftovers.py", f"{_I}test_api.py")
)
SCHEDULING = Room(
    "scheduling",
    (f"{_U}test_rooms.py", f"{_I}test_faults.py", f"{_I}test_guarantees.py", f"{_I}test_api.py"),
)
OUTPUT = Room(
    "output",
    (f"{_I}test_api.py", f"{_I}test_guarantees.py", f"{_I}test_streaming.py", f"{_I}test_cli.py"),
)
CALLS = Room(
    "calls, their workers and the Executor", (f"{_I}test_calls.py", f"{_I}test_executor.py")
)
ASYNCIO = Room("asyncio", (f"{_I}test_async.py",))
INPUT = Room(
    "input",
    (f"{_U}test_rooms.py", f"{_I}test_cli.py", f"{_I}test_streaming.py", f"{_I}test_api.py"),
)
PROTOCOL = Room("the protocol", (f"{_U}test_records.py", f"{_U}test_rooms.py", f"{_U}test_task.py"))
CLUSTER = Room(
    "the Dask driver and batches", (f"{_U}test_cluster_sizing.py", f"{_I}test_cluster.py")
)
ENGINE = Room(
    "the C engine and the command path",
    (
        f"{_U}test_engine.py",
        f"{_I}test_pipes_and_signals.py",
        f"{_I}test_api.py",
        f"{_I}test_faults.py",
        f"{_I}test_leftovers.py",
    ),
)
PARALLEL = Room("leanpool parallel", (f"{_I}test_parallel.py",))
ROOMS = (
    JOURNAL,
    STOPPING,
    LEFTOVERS,
    SCHEDULING,
    OUTPUT,
    CALLS,
    ASYNCIO,
    INPUT,
    PROTOCOL,
    CLUSTER,
    ENGINE,
    PARALLEL,
)


def in_room(room: Room, *mutants: Mutant) -> tuple[Mutant, ...]:
    """The mutants, each counted in room."""
    return tuple(replace(mutant, room=room) for mutant in mutants)


MUTANTS: tuple[Mutant, ...] = (
    *in_room(
        JOURNAL,
        Mutant(
            "journal-no-fsync",
            "the journal is fsync'ed at least once a second and at the end",
            "src/leanpool/_protocol/journal.py",
            "                os.fsync(self._fd)",
            "                pass",
        ),
        Mutant(
            "journal-partial-record",
            "a failed journal write leaves every earlier record whole, and no partial one",
            "src/leanpool/_protocol/journal.py",
            "                os.ftruncate(self._fd, self._size)",
            "                pass",
        ),
        Mutant(
            "result-before-journal",
            "a result reaches the caller only after it is in the journal",
            "src/leanpool/_runner/outbox.py",
            "        if self.journal is not None:\n            assert journal_line is not None",
            "        self._buf += line\n"
            "        if self.journal is not None:\n            assert journal_line is not None",
        ),
        Mutant(
            "journal-gets-spill-names",
            "the journal keeps every byte inline, never a spill file's name",
            "src/leanpool/_runner/outbox.py",
            "line if built.journal is None else encode_line(built.journal)",
            "line",
        ),
        Mutant(
            "resume-reruns",
            "resume skips the tasks the journal holds",
            "src/leanpool/_runner/intake.py",
            "        recorded = self._done.get(task.id)\n        if recorded is None:",
            "        recorded = None\n        if recorded is None:",
        ),
        Mutant(
            "duplicate-ids-allowed",
            "with a journal, a repeated id is refused naming both lines",
            "src/leanpool/_runner/intake.py",
            "        if not self._unique:\n            return",
            "        if True:\n            return",
        ),
    ),
    *in_room(
        STOPPING,
        Mutant(
            "stop-without-sigkill",
            "a stop (Ctrl-C, caller gone, halt now) sends SIGKILL after SIGTERM",
            "src/leanpool/_runner/loop.py",
            "            child.signal(signal.SIGTERM)\n"
            "            self.timers.add(INTERRUPT_GRACE_S, When.KILL, child)",
            "            child.signal(signal.SIGTERM)",
        ),
        Mutant(
            "kill-grace-ignored",
            "a timed-out task gets SIGKILL kill_grace seconds after SIGTERM",
            "src/leanpool/_runner/loop.py",
            '                    grace = INTERRUPT_GRACE_S if subject.abandoned else self.options["kill_grace"]',
            "                    grace = 0.5",
        ),
        Mutant(
            "fatal-without-kill",
            "a fatal error mid-run kills the running tasks",
            "src/leanpool/_runner/loop.py",
            "        finally:\n            self._kill_all()",
            "        finally:\n            pass",
        ),
        Mutant(
            "timeout-ignored",
            "a task's timeout is applied",
            "src/leanpool/_runner/loop.py",
            "        if timeout is None:\n            timeout = self._timeout\n",
            "        timeout = None\n",
        ),
        Mutant(
            "caller-death-ignored",
            "EOF on stdin (the caller is gone) stops the run",
            "src/leanpool/_runner/loop.py",
            "        if intake.caller_gone or intake.stop_asked:\n            self._caller_gone()",
            "        if intake.stop_asked:\n            self._caller_gone()",
        ),
        Mutant(
            "cleanup-dir-kept",
            "the runner removes a dead caller's private directory",
            "src/leanpool/_runner/loop.py",
            '            _remove_dir(self.config["cleanup_dir"])',
            "            pass",
        ),
        Mutant(
            "stop-taken-for-death",
            "a caller that asks to stop keeps its directory (and the runner's warnings in it)",
            "src/leanpool/_runner/loop.py",
            '        if caller_gone and not self.intake.stop_asked and self.config["cleanup_dir"]:',
            '        if caller_gone and self.config["cleanup_dir"]:',
        ),
        Mutant(
            "no-sweep-after-runner-death",
            "after a runner death, the caller kills every process of the run",
            "src/leanpool/_caller/process.py",
            "        returncode = self._wait(self.shutdown_wait)\n        sweep_run(self.token)",
            "        returncode = self._wait(self.shutdown_wait)",
        ),
    ),
    *in_room(
        LEFTOVERS,
        Mutant(
            "leftovers-not-killed",
            "what a task leaves in its group is killed when it ends",
            "src/leanpool/_runner/loop.py",
            "        keep = child.task.kill_leftovers\n",
            "        return\n        keep = child.task.kill_leftovers\n",
        ),
        Mutant(
            "leftovers-no-sigkill",
            "a leftover that ignores SIGTERM gets SIGKILL after the grace",
            "src/leanpool/_runner/leftovers.py",
            "        self._timers.add(grace, When.KILL_LEFTOVERS, pgid)",
            "        pass",
        ),
        Mutant(
            "leftovers-always-killed",
            "kill_leftovers=False keeps a task's leftovers",
            "src/leanpool/_runner/loop.py",
            "        if not keep and not child.timed_out and not child.abandoned:\n            return",
            "        if False:\n            return",
        ),
        Mutant(
            "kept-leftovers-survive-timeout",
            "a timeout kills the whole group even when leftovers are kept",
            "src/leanpool/_runner/loop.py",
            "        if not keep and not child.timed_out and not child.abandoned:",
            "        if not keep and not child.abandoned:",
        ),
        Mutant(
            "no-exit-watch",
            "a task is finished when its main process exits, whoever holds its pipes",
            "src/leanpool/_runner/shell.py",
            "        if self.exit_watched:\n            return",
            "        if True:\n            return",
        ),
        Mutant(
            "no-late-exit-watch",
            "a task whose pipes a leftover holds frees its slot soon after it ends",
            "src/leanpool/_runner/loop.py",
            "            if due <= now:\n                child.watch_exit()",
            "            if due <= now:\n                pass",
        ),
        Mutant(
            "sigchld-fallback-broken",
            "without pidfds, SIGCHLD finishes the tasks that exit",
            "src/leanpool/_runner/loop.py",
            "        if not self.pidfds:  # SIGCHLD: some child exited\n            self._reap_exited()",
            "        pass",
        ),
        Mutant(
            "drain-unbounded",
            "a leftover that keeps writing to the task's pipe does not hold the loop",
            "src/leanpool/_runner/shell.py",
            "                budget -= len(data)",
            "                pass",
        ),
        Mutant(
            "fatal-drops-buffered-results",
            "a fatal record comes after every journaled result, whole",
            "src/leanpool/_runner/main.py",
            "            run.outbox.flush(final=True)",
            "            pass",
        ),
    ),
    *in_room(
        SCHEDULING,
        Mutant(
            "capped-at-16",
            "parallel tasks run at once, however many",
            "src/leanpool/_runner/loop.py",
            "        while len(active) < schedule.parallel:",
            "        while len(active) < min(16, schedule.parallel):",
        ),
        Mutant(
            "retries-ignored",
            "a failed task is retried up to retries times",
            "src/leanpool/_runner/schedule.py",
            "        if attempt > self._retries:\n            return False",
            "        if True:\n            return False",
        ),
        Mutant(
            "halt-ignored",
            "halt stops starting tasks after that many failures",
            "src/leanpool/_runner/loop.py",
            "        if self.halts.rule is not None and not self.halted:",
            "        if False:",
        ),
        Mutant(
            "throttle-fails-tasks",
            "running out of descriptors or processes throttles instead of failing tasks",
            "src/leanpool/_runner/schedule.py",
            "        if running:\n            # Running tasks",
            "        return False\n        if running:\n            # Running tasks",
        ),
    ),
    *in_room(
        OUTPUT,
        Mutant(
            "ordered-gap-dropped",
            "with ordered, results after a gap are still sent when the run halts",
            "src/leanpool/_runner/loop.py",
            "        self.outbox.release_held()",
            "        pass",
        ),
        Mutant(
            "ordered-ignored",
            "ordered results come in task order",
            "src/leanpool/_runner/outbox.py",
            "        if not self.ordered:",
            "        if True:",
        ),
        Mutant(
            "stderr-not-capped",
            "max_output caps stderr too",
            "src/leanpool/_runner/children.py",
            "            if cap is not None and self.err_size + len(data) > cap:",
            "            if False:",
        ),
        Mutant(
            "max-output-ignored",
            "max_output caps each stream",
            "src/leanpool/_runner/children.py",
            "        cap = self.host.max_output",
            "        cap = None",
        ),
        Mutant(
            "close-keeps-stdout",
            "leaving the loop early lets the runner exit at once",
            "src/leanpool/_caller/process.py",
            "        for stream in (self._stdin, self._proc.stdout):\n            if stream is not None:\n                with contextlib.suppress(OSError):\n                    stream.close()  # stdin's EOF",
            "        for stream in (self._stdin,):\n            if stream is not None:\n                with contextlib.suppress(OSError):\n                    stream.close()  # stdin's EOF",
        ),
        Mutant(
            "feeder-trusts-nonblocking-stdin",
            "the CLI reads a streamed stdin to its end, however it was left",
            "src/leanpool/_cli.py",
            "                os.set_blocking(fd, True)",
            "                pass",
        ),
        Mutant(
            "spill-files-kept",
            "the caller removes each spill file once its result is built",
            "src/leanpool/_caller/result.py",
            "    os.unlink(spill)",
            "    pass",
        ),
        Mutant(
            "env-ignored",
            "a task's env is applied",
            "src/leanpool/_runner/shell.py",
            "    env = host.base_env if command.env is None else merged_env(host.base_env, command.env)",
            "    env = host.base_env",
        ),
        Mutant(
            "run-yields-nothing",
            "run() yields every result",
            "src/leanpool/_api.py",
            "                        yield state.result(event)\n"
            "                        if spool.offset != state.announced:",
            "                        state.result(event)\n"
            "                        if spool.offset != state.announced:",
        ),
    ),
    *in_room(
        CALLS,
        Mutant(
            "call-output-dropped-at-reply",
            "what a call prints is its output, whichever pipe the loop reads first",
            "src/leanpool/_runner/calls.py",
            "        for fd in (self.out_fd, self.err_fd):  # the call's output is in the pipes by now\n"
            "            if fd >= 0:\n                self._drain(fd)\n        self.child = None\n",
            "        self.child = None\n"
            "        for fd in (self.out_fd, self.err_fd):  # the call's output is in the pipes by now\n"
            "            if fd >= 0:\n                self._drain(fd)\n",
        ),
        Mutant(
            "worker-crash-not-reported",
            "a worker that dies fails the call it ran, and the run goes on",
            "src/leanpool/_runner/calls.py",
            "        if child is not None:\n            child.worker_died(status)\n"
            "            host.attempt_over(child)",
            "        if child is not None:\n            pass",
        ),
        Mutant(
            "worker-start-failure-loops",
            "a worker that cannot start ends the run with one error, not a restart loop",
            "src/leanpool/_runner/calls.py",
            '            host.worker_failed(f"{message}: {log}" if log else message)',
            "            pass",
        ),
        Mutant(
            "call-timeout-spares-group",
            "a call's timeout kills the worker's whole group, with what the call started",
            "src/leanpool/_runner/calls.py",
            "        self.worker.killed = True\n        signal_group(self.worker.pid, sig)",
            "        self.worker.killed = True\n        os.kill(self.worker.pid, sig)",
        ),
        Mutant(
            "timeout-charges-worker-start",
            "a call's timeout starts when its worker is ready",
            "src/leanpool/_runner/calls.py",
            "        self.running = worker.ready\n",
            "        self.running = True\n",
        ),
        Mutant(
            "workers-never-recycled",
            "max_tasks_per_worker and max_worker_memory replace workers",
            "src/leanpool/_runner/calls.py",
            "        if self.killed or self.pool.retire_after(self, reply):",
            "        if self.killed:",
        ),
        Mutant(
            "idle-workers-outlive-run",
            "no worker outlives its run",
            "src/leanpool/_runner/calls.py",
            "        for worker in self.workers.values():\n            worker.killed = True\n"
            "            signal_group(worker.pid, signal.SIGKILL)",
            "        for worker in self.workers.values():\n            worker.killed = True",
        ),
        Mutant(
            "c-output-not-flushed",
            "what a call prints through C stdio is its output too",
            "src/leanpool/_worker.py",
            "    if flush_c is not None:\n        flush_c(None)",
            "    pass",
        ),
        Mutant(
            "cancel-ignored",
            "cancel kills a running task",
            "src/leanpool/_runner/loop.py",
            "                    child.cancelled = True\n                    child.signal(signal.SIGTERM)",
            "                    child.cancelled = True",
        ),
        Mutant(
            "executor-exception-type-lost",
            "an Executor future raises the call's own exception type",
            "src/leanpool/_executor.py",
            "        rebuilt = rebuild_exception(error, result.exception_pickle)",
            "        rebuilt = None",
        ),
        Mutant(
            "executor-cancel-keeps-running",
            "cancel() of a running future kills its call",
            "src/leanpool/_executor.py",
            "        self._session.cancel(self._task_id)\n        return super().cancel()",
            "        return super().cancel()",
        ),
        Mutant(
            "map-eager",
            "Executor.map submits lazily, so an endless iterator works",
            "src/leanpool/_executor.py",
            "            self.submit(fn, *item) for item in itertools.islice(items, ahead)",
            "            self.submit(fn, *item) for item in items",
        ),
    ),
    *in_room(
        ASYNCIO,
        Mutant(
            "arun-cancel-leaves-runner",
            "cancelling an async run stops the runner and every task",
            "src/leanpool/_api.py",
            "                await runner.aclose()",
            "                pass",
        ),
        Mutant(
            "async-read-blocks-loop",
            "the event loop is never blocked by a run",
            "src/leanpool/_caller/aprocess.py",
            "        os.set_blocking(self._stdout_fd, False)",
            "        os.set_blocking(self._stdout_fd, True)",
        ),
        Mutant(
            "second-cancel-still-waits",
            "a cancel during the cleanup stops the waiting",
            "src/leanpool/_caller/aprocess.py",
            "            if proc.poll() is None:\n                proc.kill()\n                sweep_run(self.token)\n            raise",
            "            if proc.poll() is None:\n                self.close()\n            raise",
        ),
    ),
    *in_room(
        INPUT,
        Mutant(
            "file-not-validated",
            "a regular task file is validated whole before anything runs",
            "src/leanpool/_runner/loop.py",
            "            self.intake.validate()\n",
            "            self.intake._reader.announce(os.path.getsize(self.intake._path), ended=True)\n",
        ),
        Mutant(
            "stream-announced-at-eof",
            "the CLI starts tasks as their lines arrive",
            "src/leanpool/_cli.py",
            "                        self._runner.more(offset + cut + 1)",
            "                        pass",
        ),
        Mutant(
            "bad-stream-line-kills",
            "a bad streamed line lets the running tasks finish",
            "src/leanpool/_runner/loop.py",
            '        _warn(f"{exc}: starting no more tasks")\n        self._drain()',
            '        _warn(f"{exc}: starting no more tasks")\n        self._stop(by=None)',
        ),
        Mutant(
            "end-input-too-early",
            "a task added from the loop body runs in the same run",
            "src/leanpool/_api.py",
            "                        if spool.offset != state.announced:  # the loop body added tasks\n"
            "                            state.announce()",
            "                        if spool.offset != state.announced:  # the loop body added tasks\n"
            "                            runner.end_input(state.announced)\n"
            "                            state.announce()",
        ),
    ),
    *in_room(
        PROTOCOL,
        Mutant(
            "garbage-after-end-accepted",
            "half a line after the last record is a protocol error",
            "src/leanpool/_protocol/reader.py",
            "        if self._pending:\n            raise ProtocolError(",
            "        if False:\n            raise ProtocolError(",
        ),
        Mutant(
            "version-unchecked",
            "a record of another protocol version is refused",
            "src/leanpool/_protocol/reader.py",
            '        if record.get("protocol") != PROTOCOL_VERSION:',
            "        if False:",
        ),
        Mutant(
            "option-range-unchecked",
            "an option out of range is a ValueError naming it",
            "src/leanpool/_caller/options.py",
            "    if not (value >= spec.minimum and math.isfinite(value)):",
            "    if False:",
        ),
    ),
    *in_room(
        CLUSTER,
        Mutant(
            "cluster-results-twice",
            "a batch run again after its worker died records no task twice",
            "src/leanpool/_cluster/driver.py",
            "            if not 0 <= index < len(self.tasks) or index in self.delivered:",
            "            if not 0 <= index < len(self.tasks):",
        ),
        Mutant(
            "cluster-results-twice-by-id",
            "a batch run again after its worker died records no task twice (task files)",
            "src/leanpool/_cluster/driver.py",
            "            index = positions.pop(0)",
            "            index = positions[0]",
        ),
        Mutant(
            "cluster-no-watch",
            "a batch whose future is let go (the driver died) kills its tasks",
            "src/leanpool/_cluster/batch.py",
            "        if not key_state.wanted():",
            "        if False:",
        ),
        Mutant(
            "cluster-halt-not-told",
            "a halt reached in one batch starts no more tasks in any",
            "src/leanpool/_cluster/driver.py",
            '            self._tell(None, "halt", [])',
            "            pass",
        ),
        Mutant(
            "cluster-stop-not-told",
            "Ctrl-C stops the tasks on every worker at once",
            "src/leanpool/_cluster/driver.py",
            '        self._tell(None, "stop", [])',
            "        pass",
        ),
        Mutant(
            "cluster-no-early-results",
            "results stream back while a batch runs",
            "src/leanpool/_cluster/batch.py",
            "            with self._lock:\n                self.pending.append(line)",
            "            pass",
        ),
        Mutant(
            "cluster-idle-runner-kept",
            "a worker's runner ends when the run does",
            "src/leanpool/_cluster/batch.py",
            "        _close_feeds(lambda feed: feed.token == token and not feed.busy)",
            "        pass",
        ),
    ),
    *in_room(
        ENGINE,
        Mutant(
            "engine-sigpipe-ignored",
            "a command starts with SIGPIPE at its default action (``yes | head`` ends)",
            "src/leanpool/_runner/_engine.c",
            "    sigaction(SIGPIPE, &dfl, NULL);",
            "",
        ),
        Mutant(
            "engine-no-session",
            "each command is the leader of a session and process group of its own",
            "src/leanpool/_runner/_engine.c",
            "    setsid();",
            "",
        ),
        Mutant(
            "engine-cwd-ignored",
            "a command runs in its cwd",
            "src/leanpool/_runner/_engine.c",
            "    if (plan->cwd != NULL && chdir(plan->cwd) != 0) {",
            "    if (0) {",
        ),
        Mutant(
            "engine-leftovers-unseen",
            "what a command leaves in its group is found when it ends (engine path)",
            "src/leanpool/_runner/_engine.c",
            "    if (kill(-pgid, 0) == 0) return 1;\n    return errno == EPERM;",
            "    (void)pgid;\n    return 0;",
        ),
        Mutant(
            "engine-max-output-ignored",
            "max_output keeps the first bytes and says it cut the rest (engine path)",
            "src/leanpool/_runner/_engine.c",
            "    if (self->max_output >= 0 && s->len + got > (size_t)self->max_output) {",
            "    if (0) {",
        ),
        Mutant(
            "engine-exit-drops-buffered-output",
            "output still in the pipes when the exit is seen first is kept",
            "src/leanpool/_runner/_engine.c",
            "    if (p->out.fd >= 0) held |= drain(self, p, &p->out);",
            "    forget_fd(self, &p->out.fd);",
        ),
        Mutant(
            "engine-stream-not-rearmed",
            "a command's output that comes in several pieces is read whole (one-shot re-arm)",
            "src/leanpool/_runner/_engine.c",
            "    if (arm_stream(self, idx, s, s == &p->out ? TAG_OUT : TAG_ERR) < 0) {",
            "    if (0) {",
        ),
        Mutant(
            "engine-fired-stream-kept",
            "a command ends once its pipes hang up (a fired one-shot stream is closed)",
            "src/leanpool/_runner/_engine.c",
            "    s->watch = WATCH_FIRED;   /* one-shot: this event disarmed it */\n"
            "    if (events & EPOLLIN) {",
            "    s->watch = WATCH_FIRED;   /* one-shot: this event disarmed it */\n"
            "    if (events & EPOLLHUP) goto go_on;\n    if (events & EPOLLIN) {",
        ),
        Mutant(
            "engine-validation-lax",
            "a task file with a bad line runs nothing (the validation pass in C)",
            "src/leanpool/_runner/_codec.c",
            "            } else if (scan_plain(line, stop, &plain) && plain_line_valid(&plain)) {",
            "            } else if (1) {",
        ),
        Mutant(
            "short-way-ignores-timeout",
            "a timed-out command is reported timed out, even when it exits 0 on SIGTERM",
            "src/leanpool/_runner/results.py",
            "        or child.timed_out\n",
            "",
        ),
        Mutant(
            "pure-python-switch-ignored",
            "LEANPOOL_PURE_PYTHON=1 runs the runner in pure Python",
            "src/leanpool/_runner/piped.py",
            "    if os.environ.get(PURE_PYTHON_ENV):",
            "    if False:",
        ),
    ),
    # Mutants of our own in the newest rooms (issue 27), beside the promises it named.
    *in_room(
        CALLS,
        Mutant(
            "worker-memory-limit-ignored",
            "max_worker_memory replaces a worker whose RSS is over it",
            "src/leanpool/_runner/calls.py",
            "        return self.max_memory is not None and isinstance(rss, int) and rss > self.max_memory",
            "        return False",
        ),
        Mutant(
            "worker-boot-log-dropped",
            "a worker that cannot start says why, with what it printed",
            "src/leanpool/_runner/calls.py",
            '            host.worker_failed(f"{message}: {log}" if log else message)',
            "            host.worker_failed(message)",
        ),
        Mutant(
            "worker-bad-reply-trusted",
            "a call that writes on the reply pipe fails that call; the run goes on",
            "src/leanpool/_runner/calls.py",
            "                replies.clear()\n                self.bad_reply = True\n                self.retire()\n                break",
            "                replies.clear()\n                break",
        ),
        Mutant(
            "executor-arg-file-kept",
            "a call's big-argument file is removed once the call is done",
            "src/leanpool/_executor.py",
            "            with contextlib.suppress(OSError):\n                os.unlink(self._payload_path(task_id))",
            "            pass",
        ),
        Mutant(
            "executor-cancel-futures-ignored",
            "shutdown(cancel_futures=True) cancels the futures not done",
            "src/leanpool/_executor.py",
            "        for future in pending:\n            future.cancel()\n        if first",
            "        if first",
        ),
        Mutant(
            "executor-map-timeout-ignored",
            "map(timeout=) raises TimeoutError when a value is late",
            "src/leanpool/_executor.py",
            "                    remaining = None if deadline_at is None else deadline_at - time.monotonic()",
            "                    remaining = None",
        ),
        Mutant(
            "executor-not-broken",
            "after the runner dies, submit raises BrokenExecutor",
            "src/leanpool/_executor.py",
            '                    self._broken = f"the leanpool runner is gone: {error}"',
            "                    self._closing = True",
        ),
    ),
    *in_room(
        ASYNCIO,
        Mutant(
            "async-crash-not-swept",
            "after an async run's runner dies, no task of it survives",
            "src/leanpool/_caller/aprocess.py",
            "                returncode = await self._await_exit(self.shutdown_wait)\n                await asyncio.get_running_loop().run_in_executor(None, sweep_run, self.token)",
            "                returncode = await self._await_exit(self.shutdown_wait)",
        ),
        Mutant(
            "async-stuck-runner-not-killed",
            "an async run's runner that does not stop when asked is killed",
            "src/leanpool/_caller/aprocess.py",
            "                if await self._await_exit(self.shutdown_wait) is None:\n                    proc.kill()",
            "                if await self._await_exit(self.shutdown_wait) is None:\n                    pass",
        ),
        Mutant(
            "async-fatal-swallowed",
            "a runner's fatal error is raised in an async run",
            "src/leanpool/_caller/aprocess.py",
            "            raise fatal_error(event.record, self.reader.completed)",
            "            pass",
        ),
    ),
    *in_room(
        PARALLEL,
        Mutant(
            "parallel-value-unquoted",
            "a value reaches the shell as one quoted word: nothing in it runs",
            "src/leanpool/_parallel/template.py",
            '            return " ".join(shlex.quote(change(a)) for a in args)',
            '            return " ".join(change(a) for a in args)',
        ),
        Mutant(
            "parallel-dirname-of-bare-name",
            "{//} of a name without a slash is .",
            "src/leanpool/_parallel/template.py",
            '    return head if head else ("/" if slash else ".")',
            "    return head",
        ),
        Mutant(
            "parallel-tag-dropped",
            "--tag puts the job's arguments before each line it prints",
            "src/leanpool/_parallel/main.py",
            '                data = b"".join(tag + b"\\t" + line for line in lines)',
            "                pass",
        ),
        Mutant(
            "parallel-keep-order-ignored",
            "-k prints outputs in input order",
            "src/leanpool/_parallel/main.py",
            "            ordered=job.keep_order,",
            "            ordered=False,",
        ),
        Mutant(
            "parallel-failures-not-capped",
            "more than 100 failed jobs exit with 101",
            "src/leanpool/_parallel/main.py",
            "        return min(failures, _MOST_FAILURES)",
            "        return failures % 256",
        ),
        Mutant(
            "parallel-link-not-cycled",
            "--link starts the shorter sources over",
            "src/leanpool/_parallel/inputs.py",
            "            yield tuple(items[index % len(items)] for items in lists)",
            "            yield tuple(items[min(index, len(items) - 1)] for items in lists)",
        ),
        Mutant(
            "parallel-slot-unset",
            "{%} is the job's slot",
            "src/leanpool/_parallel/main.py",
            "            slot_env=SLOT_VARIABLE if template.uses_slot else None,",
            "            slot_env=None,",
        ),
    ),
    *in_room(
        CLUSTER,
        Mutant(
            "cluster-halt-one-late",
            "halt=N on a cluster stops after the N-th failure",
            "src/leanpool/_cluster/driver.py",
            "            halt = self.halts.after(self.completed, self.failed)",
            "            halt = self.halts.after(self.completed, self.failed - 1)",
        ),
        Mutant(
            "cluster-halt-now-lets-run",
            "halt_now on a cluster kills the running tasks",
            "src/leanpool/_cluster/driver.py",
            "                self._halt(now=halt.now)",
            "                self._halt(now=False)",
        ),
        Mutant(
            "cluster-lines-ids-lost",
            "a --lines run on a cluster numbers its tasks by their line",
            "src/leanpool/_cluster/driver.py",
            '        if batch.lines_format:\n            record["id"] = task.id',
            "        pass",
        ),
        Mutant(
            "cluster-killer-task-not-isolated",
            "a task that kills its Dask worker fails alone; the rest of its batch completes",
            "src/leanpool/_cluster/driver.py",
            "            if len(left) > 1:  # find the task that kills its worker: one at a time",
            "            if False:  # find the task that kills its worker: one at a time",
        ),
    ),
    *in_room(
        ENGINE,
        Mutant(
            "engine-signal-mask-inherited",
            "a command starts with no signal blocked",
            "src/leanpool/_runner/_engine.c",
            "    sigemptyset(&none);\n    sigprocmask(SIG_SETMASK, &none, NULL);",
            "    (void)none;",
        ),
        Mutant(
            "engine-eacces-forgotten",
            "a command on PATH that is not executable fails with Permission denied",
            "src/leanpool/_runner/_engine.c",
            "            plan->err = seen_eacces ? EACCES : last;",
            "            plan->err = last;",
        ),
        Mutant(
            "engine-backslash-unescaped",
            "output with a backslash arrives exact (the C encoder escapes it)",
            "src/leanpool/_runner/_codec.c",
            "        if (c >= 0x20 && c != '\"' && c != '\\\\') continue;",
            "        if (c >= 0x20 && c != '\"') continue;",
        ),
        Mutant(
            "engine-encoded-surrogates-taken",
            "bytes that encode a surrogate are not UTF-8: they travel exact",
            "src/leanpool/_runner/_codec.c",
            "            if (c == 0xED) hi = 0x9F;",
            "",
        ),
    ),
    # The promises issue 27 named (each had no guard, each with the bug that showed it),
    # then mutants of the guards that came after.
    *in_room(
        CALLS,
        Mutant(
            "executor-map-exit-keeps-calls",
            "leaving Executor.map early cancels (kills) the calls still in flight",
            "src/leanpool/_executor.py",
            "                for future in window:\n                    future.cancel()",
            "                for future in window:\n                    pass",
        ),
        Mutant(
            "call-value-spill-kept",
            "a call's spilled return value is removed once the caller has read it",
            "src/leanpool/_caller/result.py",
            "                spills.append(value_spill)",
            "                pass",
        ),
        Mutant(
            "crash-output-not-drained",
            "what a call printed before its worker died is in its result, all of it",
            "src/leanpool/_runner/calls.py",
            "        for fd in (self.out_fd, self.err_fd):\n            if fd >= 0:\n                self._drain(fd)\n        self.release()",
            "        self.release()",
        ),
        Mutant(
            "crash-output-dropped",
            "what a call printed before its worker died is in its result",
            "src/leanpool/_runner/calls.py",
            "    def worker_died(self, status: int) -> None:\n        self.status = status\n",
            "    def worker_died(self, status: int) -> None:\n        self.status = status\n        self.out_chunks, self.err_chunks = [], []\n",
        ),
        Mutant(
            "cancel-of-starting-worker-ends-run",
            "cancelling a call whose worker is still starting cancels that call, not the run",
            "src/leanpool/_runner/calls.py",
            "        if not self.ready and not self.killed:",
            "        if not self.ready:",
        ),
        Mutant(
            "crash-leftovers-spared",
            "what a crashed call started (its worker's group) is killed",
            "src/leanpool/_runner/calls.py",
            "            if child is not None:\n                host.leftovers_found(child)\n            else:",
            "            if child is not None:\n                pass\n            else:",
        ),
        Mutant(
            "sys-exit-ends-worker",
            "sys.exit() in a call is its failure (SystemExit), and its worker lives on",
            "src/leanpool/_worker.py",
            "    except BaseException as exc:  # SystemExit too: a call cannot end the worker",
            "    except Exception as exc:  # SystemExit too: a call cannot end the worker",
        ),
    ),
    *in_room(
        ASYNCIO,
        Mutant(
            "async-reader-spins",
            "a loop body awaiting something else does not make the event loop spin on the runner's pipe",
            "src/leanpool/_caller/aprocess.py",
            "        if readable is None:\n            self._stop_reading()",
            "        if readable is None:\n            pass",
        ),
        Mutant(
            "arun-and-wait-total-counts-skipped",
            "arun_and_wait's total leaves out the tasks a resumed journal holds",
            "src/leanpool/_api.py",
            "outcome = callback(result, completed, len(self) - self._skipped)",
            "outcome = callback(result, completed, len(self))",
        ),
    ),
    *in_room(
        CLUSTER,
        Mutant(
            "cluster-control-crosses-runs",
            "on a shared cluster, stopping one run never touches another run's tasks",
            "src/leanpool/_cluster/batch.py",
            "            if live.token == token and (key is None or live.key == key)",
            "            if key is None or live.key == key",
        ),
        Mutant(
            "cluster-unsent-cancel-silent",
            "cancelling a task not yet sent to the cluster gives it a cancelled result",
            "src/leanpool/_cluster/driver.py",
            "                    self._deliver(cancelled_result(task.id, 1), seq, task)\n",
            "",
        ),
        Mutant(
            "cluster-unsent-cancel-run-wide",
            "cancelling a task not yet sent to the cluster cancels that task only",
            "src/leanpool/_cluster/driver.py",
            "                if self._cancel_unread.pending and self._cancel_unread.meets(\n"
            "                    task.id, retry=False, consumed=self.intake.consumed\n"
            "                ):",
            "                if self._cancel_unread.pending:",
        ),
    ),
    *in_room(
        PARALLEL,
        Mutant(
            "parallel-feeder-count-vs-offset",
            "leanpool parallel tells the runner of its jobs however many there are (no hang past 100,000)",
            "src/leanpool/_parallel/main.py",
            "                        if seq != announced:\n                            spool.flush()\n                            self._runner.more(offset)\n                            announced = seq\n",
            "                        if offset != announced:\n                            spool.flush()\n                            self._runner.more(offset)\n                            announced = offset\n",
        ),
        Mutant(
            "parallel-last-line-dropped",
            "a last input line without its newline is a job",
            "src/leanpool/_parallel/inputs.py",
            "    if pending:\n        yield _decode(pending, separator)\n",
            "",
        ),
        Mutant(
            "parallel-halt-2-soon",
            "--halt 2 is now,fail=1: it kills the running jobs",
            "src/leanpool/_parallel/syntax.py",
            'Halt(now=text == "2", on_failure=True',
            "Halt(now=False, on_failure=True",
        ),
        Mutant(
            "parallel-halt-1-now",
            "--halt 1 is soon,fail=1: the running jobs finish",
            "src/leanpool/_parallel/syntax.py",
            'Halt(now=text == "2", on_failure=True',
            "Halt(now=True, on_failure=True",
        ),
        Mutant(
            "parallel-null-drops-cr",
            "with -0 an item keeps a trailing \\r (only lines drop it)",
            "src/leanpool/_parallel/inputs.py",
            'if separator == b"\\n" and item.endswith(b"\\r"):',
            'if item.endswith(b"\\r"):',
        ),
        Mutant(
            "parallel-signal-status",
            "a job killed by signal N makes the exit status 128+N under --halt ...,fail=1",
            "src/leanpool/_parallel/main.py",
            "        return 128 - result.status\n",
            "        return -result.status\n",
        ),
        Mutant(
            "halt-percent-needs-3",
            "a percentage halt needs 3 jobs done before it can fire",
            "src/leanpool/_runner/halts.py",
            "reached = completed >= 3 and seen * 100 >= percent * completed",
            "reached = completed >= 1 and seen * 100 >= percent * completed",
        ),
        Mutant(
            "halt-percent-needs-4",
            "a percentage halt needs 3 jobs done before it can fire (not 4)",
            "src/leanpool/_runner/halts.py",
            "reached = completed >= 3 and seen * 100 >= percent * completed",
            "reached = completed > 3 and seen * 100 >= percent * completed",
        ),
    ),
    *in_room(
        ENGINE,
        Mutant(
            "engine-exit-unwatched",
            "a command whose group outlives it is reported when asked to watch its exit",
            "src/leanpool/_runner/_engine.c",
            "    if (watch_exit(self, idx) < 0) Py_RETURN_FALSE;\n    Py_RETURN_TRUE;\n}\n\nstatic PyObject *Engine_abandon",
            "    Py_RETURN_TRUE;\n}\n\nstatic PyObject *Engine_abandon",
        ),
    ),
    *in_room(
        INPUT,
        Mutant(
            "spool-line-quadratic",
            "a very long task line is read in linear time",
            "src/leanpool/_protocol/spool.py",
            "            self._tail.append(data)\n            return True",
            '            self._tail = [b"".join([*self._tail, data])]\n            return True',
        ),
    ),
    *in_room(
        LEFTOVERS,
        Mutant(
            "leftover-grace-default",
            "a leftover gets SIGKILL kill_grace seconds after SIGTERM",
            "src/leanpool/_runner/loop.py",
            '        grace = INTERRUPT_GRACE_S if child.abandoned else self.options["kill_grace"]',
            "        grace = INTERRUPT_GRACE_S if child.abandoned else 2.0",
        ),
    ),
    *in_room(
        STOPPING,
        Mutant(
            "stop-waits-kill-grace",
            "a stop SIGKILLs 0.5 s after its SIGTERM, whatever kill_grace says",
            "src/leanpool/_runner/loop.py",
            "            child.signal(signal.SIGTERM)\n            self.timers.add(INTERRUPT_GRACE_S, When.KILL, child)",
            '            child.signal(signal.SIGTERM)\n            self.timers.add(self.options["kill_grace"], When.KILL, child)',
        ),
    ),
    *in_room(
        ENGINE,
        Mutant(
            "engine-drain-one-chunk",
            "every byte a pipe holds when its writer exits is kept, however large the pipe (engine, exit seen first)",
            "src/leanpool/_runner/_engine.c",
            "    long budget = fcntl(s->fd, F_GETPIPE_SZ);",
            "    long budget = READ_CHUNK;",
        ),
        Mutant(
            "engine-hangup-ends-stream",
            "every byte a pipe holds when its writer hangs up is kept, however large the pipe (engine)",
            "src/leanpool/_runner/_engine.c",
            "            if (!(events & EPOLLHUP) || (size_t)got == size) goto go_on;",
            "            if (!(events & EPOLLHUP)) goto go_on;",
        ),
        Mutant(
            "drain-one-chunk",
            "every byte a pipe holds when its writer exits is kept, however large the pipe (Python, exit seen first)",
            "src/leanpool/_runner/shell.py",
            "            budget = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)",
            "            budget = READ_CHUNK",
        ),
        Mutant(
            "hangup-ends-stream",
            "every byte a pipe holds when its writer hangs up is kept, however large the pipe (Python)",
            "src/leanpool/_runner/shell.py",
            "                if not events & EPOLLHUP or len(data) == size:",
            "                if not events & EPOLLHUP:",
        ),
        Mutant(
            "engine-max-output-edge",
            "an output of exactly max_output bytes is not flagged as cut (engine)",
            "src/leanpool/_runner/_engine.c",
            "    if (self->max_output >= 0 && s->len + got > (size_t)self->max_output) {",
            "    if (self->max_output >= 0 && s->len + got >= (size_t)self->max_output) {",
        ),
        Mutant(
            "max-output-edge",
            "an output of exactly max_output bytes is not flagged as cut (Python, stdout)",
            "src/leanpool/_runner/children.py",
            "            if cap is not None and self.out_size + len(data) > cap:",
            "            if cap is not None and self.out_size + len(data) >= cap:",
        ),
        Mutant(
            "max-output-edge-stderr",
            "an output of exactly max_output bytes is not flagged as cut (Python, stderr)",
            "src/leanpool/_runner/children.py",
            "            if cap is not None and self.err_size + len(data) > cap:",
            "            if cap is not None and self.err_size + len(data) >= cap:",
        ),
        Mutant(
            "stderr-cut-unsaid",
            "a result says when max_output cut its stderr alone",
            "src/leanpool/_runner/results.py",
            "    if not ok or child.attempt > 1 or outcome.stdout_truncated or outcome.stderr_truncated:",
            "    if not ok or child.attempt > 1 or outcome.stdout_truncated:",
        ),
        Mutant(
            "engine-sigxfsz-ignored",
            "a command starts with SIGXFSZ at its default action (engine)",
            "src/leanpool/_runner/_engine.c",
            "    sigaction(SIGXFSZ, &dfl, NULL);",
            "",
        ),
        Mutant(
            "sigxfsz-ignored",
            "a command starts with SIGXFSZ at its default action (Python)",
            "src/leanpool/_runner/spawn.py",
            "_RESET_TO_DEFAULT: Final = (signal.SIGPIPE, signal.SIGXFSZ)",
            "_RESET_TO_DEFAULT: Final = (signal.SIGPIPE,)",
        ),
        Mutant(
            "sigpipe-ignored",
            "a command starts with SIGPIPE at its default action (Python)",
            "src/leanpool/_runner/spawn.py",
            "_RESET_TO_DEFAULT: Final = (signal.SIGPIPE, signal.SIGXFSZ)",
            "_RESET_TO_DEFAULT: Final = (signal.SIGXFSZ,)",
        ),
        Mutant(
            "engine-handlers-ignored",
            "the signals the runner handles start at their default action in a command, not ignored (engine)",
            "src/leanpool/_runner/_engine.c",
            "    for (i = 0; i < plan->ncaught; i++) sigaction(plan->caught[i], &dfl, NULL);",
            "    for (i = 0; i < plan->ncaught; i++) {\n        struct sigaction ign;\n        memset(&ign, 0, sizeof ign);\n        ign.sa_handler = SIG_IGN;\n        sigaction(plan->caught[i], &ign, NULL);\n    }",
        ),
        Mutant(
            "engine-caller-ignores-undone",
            "a signal the caller ignores (nohup's SIGHUP) stays ignored in a command (engine)",
            "src/leanpool/_runner/_engine.c",
            "    for (i = 0; i < plan->ncaught; i++) sigaction(plan->caught[i], &dfl, NULL);",
            "    for (i = 1; i < NSIG; i++) sigaction(i, &dfl, NULL);",
        ),
    ),
    *in_room(
        SCHEDULING,
        Mutant(
            "cancel-outlives-its-task",
            "a cancel that can no longer meet its task is forgotten (the pending cancels stay few)",
            "src/leanpool/_runner/cancels.py",
            "        return consumed >= before and not self._retrying(task_id)",
            "        return False",
        ),
        Mutant(
            "cancel-misses-a-waiting-retry",
            "a cancel reaches a retry that waits, whatever was read since",
            "src/leanpool/_runner/cancels.py",
            "            if before is None or retry or consumed <= before:",
            "            if before is None or consumed <= before:",
        ),
    ),
    # The promises issue 27 named (each had no guard), with the bug that showed it.
    *in_room(
        ASYNCIO,
        Mutant(
            "runner-ignores-stop",
            "a stop the caller asks for (or its leaving) stops the run's tasks at once",
            "src/leanpool/_runner/loop.py",
            "        if intake.caller_gone or intake.stop_asked:\n            self._caller_gone()",
            "        if False:\n            self._caller_gone()",
        ),
    ),
    *in_room(
        CALLS,
        Mutant(
            "workers-reap-waits-deadline",
            "a run's end does not wait out a deadline for its workers to be reaped",
            "src/leanpool/_runner/loop.py",
            "                if workers is not None:\n                    workers.reaped(pid)",
            "                if workers is not None:\n                    pass",
        ),
    ),
    *in_room(
        CLUSTER,
        Mutant(
            "cluster-runners-not-finished",
            "a run's runners on the workers end with the run (the driver says finish), not IDLE_S later",
            "src/leanpool/_cluster/driver.py",
            '        self._tell(None, "finish", [])  # the workers\' idle runners of this run end now',
            "        pass",
        ),
    ),
    *in_room(
        PARALLEL,
        Mutant(
            "parallel-pause-not-announced",
            "leanpool parallel runs each job as its input line comes, before the input ends",
            "src/leanpool/_parallel/main.py",
            "                        if seq != announced:\n                            spool.flush()",
            "                        if seq != announced and args is not PAUSE:\n                            spool.flush()",
        ),
    ),
    *in_room(
        CLUSTER,
        Mutant(
            "cluster-halt-rule-ignored",
            "a halt_rule (GNU parallel's --halt) halts a run on a cluster too",
            "src/leanpool/_cluster/driver.py",
            "        if self.halts.rule is not None and not self.halted:",
            "        if False:",
        ),
    ),
    *in_room(
        SCHEDULING,
        Mutant(
            "short-way-skips-a-percentage-halt",
            "a percentage halt sees the successes that complete its 3 results",
            "src/leanpool/_runner/halts.py",
            '            rule["on"] == "success" or rule["percent"] is not None',
            '            rule["on"] == "success"',
        ),
    ),
)


def _copy_checkout(dest: Path) -> None:
    for name in ("src", "tests", "pyproject.toml", "README.md", "examples", "docs"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)


def _build_engine(source: Path) -> bool:
    """Compile the copy's C engine, source (a mutant unit) among its units, over the copy's
    built engine, as pip install would: every unit setup.py's ENGINE_SOURCES lists."""
    import ast
    import importlib.machinery
    import sysconfig

    # Read, not imported: importing setup.py would run setup().
    tree = ast.parse((ROOT / "setup.py").read_text())
    units: list[str] = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [ast.unparse(target) for target in node.targets] == ["ENGINE_SOURCES"]
    )
    work = next(folder for folder in source.parents if (folder / "pyproject.toml").exists())
    paths = [str(work / unit) for unit in units]
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    output = (work / units[0]).with_name(f"_engine{suffix}")
    include = sysconfig.get_paths()["include"]
    command = ["cc", "-O2", "-std=gnu11", "-shared", "-fPIC", f"-I{include}", *paths]
    return subprocess.run([*command, "-o", str(output)], capture_output=True).returncode == 0


def run_one(
    mutant: Mutant, tests: list[str] | None = None, *, room_only: bool = False
) -> tuple[str, str, float]:
    """(verdict, detail, seconds): verdict is killed, survived or error.

    Without tests given, the mutant runs against its room's tests, and if it survives
    those (unless room_only), against the whole suite: ``detail`` then says it was
    caught outside its room.
    """
    if tests is not None:
        return _run_suite(mutant, tests)
    own = _room_tests(mutant)
    verdict, detail, took = _run_suite(mutant, own)
    if verdict != "survived" or room_only or own == list(WHOLE_SUITE):
        return verdict, detail, took
    verdict, detail, more = _run_suite(mutant, list(WHOLE_SUITE))
    if verdict == "killed":
        detail = f"(outside its room) {detail}"
    return verdict, detail, took + more


def _room_tests(mutant: Mutant) -> list[str]:
    if mutant.room is None:
        return list(WHOLE_SUITE)
    return [path for path in mutant.room.tests if (ROOT / path).exists()] or list(WHOLE_SUITE)


def _run_suite(mutant: Mutant, tests: list[str]) -> tuple[str, str, float]:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="leanpool-mutant-") as tmp:
        work = Path(tmp)
        _copy_checkout(work)
        target = work / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            return "error", f"text found {text.count(mutant.old)} times", 0.0
        target.write_text(text.replace(mutant.old, mutant.new))
        if target.suffix in (".c", ".h") and not _build_engine(target):
            return "error", "the mutant engine does not compile", 0.0
        env = {**os.environ, "PYTHONPATH": str(work / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("CI", None)  # a mutant is judged by failures, not by skips
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
        command += [*tests, "-o", "addopts=--strict-markers"]
        limit = WHOLE_SUITE_TIMEOUT_S if tests == list(WHOLE_SUITE) else PER_MUTANT_TIMEOUT_S
        try:
            proc = subprocess.run(
                command,
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired:
            return (
                "killed",
                f"the suite hung past {limit} s",
                time.monotonic() - began,
            )
        took = time.monotonic() - began
        if VERBOSE:
            print(proc.stdout[-6000:], proc.stderr[-2000:], flush=True)
        failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        if proc.returncode == 0:
            return "survived", proc.stdout.strip().splitlines()[-1], took
        if failed:
            return "killed", failed[0].split(" - ")[0], took
        return "killed", proc.stdout.strip().splitlines()[-1][:200], took


def _changed_paths(base: str) -> set[str]:
    """The files changed since base, committed or not."""
    proc = subprocess.run(
        ["git", "diff", "--name-only", base], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(proc.stdout.split())


def choose(names: list[str], rooms: list[str], changed: str | None) -> list[Mutant]:
    """The mutants named, or of the rooms named (a part of a room's name is enough), or
    of every room one of whose mutants' files changed since the commit changed; all by
    default."""
    chosen = list(MUTANTS)
    if names:
        unknown = set(names) - {m.name for m in MUTANTS}
        if unknown:
            raise SystemExit(f"no such mutant: {', '.join(sorted(unknown))}")
        chosen = [m for m in chosen if m.name in names]
    if rooms:
        chosen = [m for m in chosen if m.room is not None and any(r in m.room.name for r in rooms)]
    if changed is not None:
        paths = _changed_paths(changed)
        touched = {m.room for m in MUTANTS if m.path in paths}
        chosen = [m for m in chosen if m.room in touched]
    return chosen


def main() -> int:
    # Started in the background of a shell, we (and so the suite) would inherit SIGINT
    # ignored, and the Ctrl-C tests would fail for that alone.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--markdown", metavar="PATH", help="write the result tables here")
    parser.add_argument(
        "--tests",
        nargs="+",
        metavar="PATH",
        help="run only these tests for each mutant (default: its room's, then all)",
    )
    parser.add_argument(
        "--room", action="append", default=[], help="run only this room's mutants (repeatable)"
    )
    parser.add_argument(
        "--changed",
        metavar="COMMIT",
        help="run only the rooms whose files changed since COMMIT (an issue's last look)",
    )
    parser.add_argument(
        "--room-only",
        action="store_true",
        help="judge each mutant by its room's tests alone (quick: no whole-suite second run)",
    )
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="append each verdict to this JSON-lines file as it comes (a long run that is "
        "cut short keeps what it did)",
    )
    parser.add_argument(
        "--from",
        dest="recorded",
        nargs="+",
        metavar="PATH",
        help="run nothing: take the verdicts from these --record files (the last verdict "
        "of a mutant wins) and write --markdown from them",
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show each run's output")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    chosen = choose(args.names, args.room, args.changed)
    if args.list:
        for m in chosen:
            where = m.room.name if m.room is not None else "-"
            print(f"{m.name:36} {where:40} {m.promise}")
        return 0
    rows: list[Row] = []
    if args.recorded:
        rows = _recorded(args.recorded, chosen)
    for mutant in [] if args.recorded else chosen:
        verdict, detail, took = run_one(mutant, args.tests, room_only=args.room_only)
        rows.append((mutant, verdict, detail, took))
        print(f"{verdict:9} {mutant.name:36} {took:6.1f} s  {detail}", flush=True)
        if args.record:
            with open(args.record, "a") as f:
                verdict_line = {"name": mutant.name, "verdict": verdict, "detail": detail}
                f.write(json.dumps({**verdict_line, "seconds": round(took, 1)}) + "\n")
    counts = {v: sum(1 for r in rows if r[1] == v) for v in ("killed", "survived", "error")}
    summary = (
        f"{len(rows)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
        f"{counts['error']} errors"
    )
    print(summary)
    if args.markdown:
        _write_markdown(Path(args.markdown), rows, summary)
    return 0 if not counts["survived"] and not counts["error"] else 1


Row = tuple[Mutant, str, str, float]


def _recorded(paths: list[str], chosen: list[Mutant]) -> list[Row]:
    """The verdicts of --record files for the chosen mutants, in the list's order."""
    found: dict[str, tuple[str, str, float]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            entry = json.loads(line)
            found[entry["name"]] = (entry["verdict"], entry["detail"], entry["seconds"])
    return [(m, *found[m.name]) for m in chosen if m.name in found]


BEGIN = "<!-- mutate.py: the latest run, begin -->"
END = "<!-- mutate.py: the latest run, end -->"


def _write_markdown(path: Path, rows: list[Row], summary: str) -> None:
    """Write the run's tables between the BEGIN and END marks of path (the rest of the
    page, its history, is kept), or a new page."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        BEGIN,
        "",
        f"Code: commit `{head}` plus the working tree; {when}. Each mutant ran against its",
        "room's tests with `-x`; a survivor run again against the whole suite and killed",
        "there counts as killed elsewhere.",
        "",
        f"**{summary}.**",
        "",
        "| room | mutants | killed by the room's tests | killed elsewhere | survived | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for room in [*ROOMS, None]:
        mine = [r for r in rows if r[0].room is room]
        if not mine:
            continue
        inside = sum(1 for r in mine if r[1] == "killed" and "(outside its room)" not in r[2])
        outside = sum(1 for r in mine if r[1] == "killed") - inside
        survived = sum(1 for r in mine if r[1] == "survived")
        errors = sum(1 for r in mine if r[1] == "error")
        name = room.name if room is not None else "(no room)"
        lines.append(f"| {name} | {len(mine)} | {inside} | {outside} | {survived} | {errors} |")
    lines += [
        "",
        "| mutant | room | the promise it breaks | verdict | caught by | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for mutant, verdict, detail, took in rows:
        caught = detail.replace("|", "\\|")
        where = mutant.room.name if mutant.room is not None else "-"
        lines.append(
            f"| `{mutant.name}` | {where} | {mutant.promise} | {verdict} | `{caught}` | {took:.0f} |"
        )
    lines += ["", END]
    block = "\n".join(lines)
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        before, rest = old.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        path.write_text(before + block + after)
    else:
        path.write_text((old.rstrip() + "\n\n" if old else "# Mutation run\n\n") + block + "\n")


if __name__ == "__main__":
    sys.exit(main())

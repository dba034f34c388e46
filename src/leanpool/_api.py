"""The caller's side: ``TaskRunner`` (add, then run) and ``run_tasks`` (one call)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import weakref
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, final

from ._caller.calls import call_record, worker_config
from ._caller.commands import command_record
from ._caller.options import make_options
from ._caller.process import RunnerProcess
from ._caller.progress import Progress
from ._caller.result import Result, RunSummary, result_from_record
from ._cluster.connect import cluster_config
from ._errors import LeanpoolError, ProtocolError, RunnerError
from ._protocol.config import runner_config
from ._protocol.reader import Ended, Idle, ResultEvent, Skipped
from ._protocol.spool import SpoolWriter

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._caller.options import KeywordOptions
    from ._protocol.config import RunnerConfig
    from ._protocol.reader import Event
    from ._protocol.records import EndRecord

__all__ = ["TaskRunner", "arun_tasks", "run_tasks"]

Command = str | Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]]
Callback = Callable[[Result, int, int], object]
AsyncCallback = Callable[[Result, int, int], "Awaitable[object] | object"]


@final
class TaskRunner:
    """A pool of shell tasks that runs in a separate, lean process.

    ``add()`` appends each task to a private temporary file as it is called, so the
    caller's memory does not grow with the number of tasks; ``run()`` starts one runner
    process that reads them back as slots free and streams each result as soon as its
    task ends.  The cost of starting a task then does not depend on how much memory the
    caller holds.

    Example::

        runner = TaskRunner(8)
        runner.add("task_1", "echo 1")
        runner.add("task_2", ["grep", "-c", "x", path])
        for result in runner.run():
            print(result.id, result.status, result.stdout)

    Tasks added while ``run()`` is being iterated (from the loop body, or a
    ``run_and_wait`` callback) run in the same run: a crawler adds the work each result
    tells it about.  The run ends once every task added has a result and the loop is
    not adding.  After that the runner is empty again and takes a new batch.

    Args:
        parallel: how many tasks run at once; default twice the usable CPUs (the
            original's choice: tasks that wait on I/O leave the CPUs idle otherwise).
        tmpdir: where the private spool directory is made; default: tempfile's choice.
        **options: the run's options, each described in the README's option table:
            ``timeout`` (seconds before a task's process group gets SIGTERM),
            ``kill_grace`` (2.0: seconds from SIGTERM to SIGKILL), ``kill_leftovers``
            (True: what a task leaves running in its group is killed when it ends),
            ``max_output`` (bytes kept per stream), ``output_dir`` (stream files
            instead of returned output), ``retries`` and ``retry_delay``, ``halt`` and
            ``halt_now`` (stop after that many failures), ``journal`` (a durable JSONL
            file of results) and ``resume`` (skip what the journal holds).
        cluster: run on a Dask cluster rather than on this machine: a scheduler's
            address (``"tcp://host:8786"``), ``"local:N"`` (a LocalCluster of N
            workers, for trying it) or a ``distributed.Client`` (its scheduler is
            used).  Needs ``pip install 'leanpool[dask]'``; ``parallel`` is then the
            tasks each worker thread runs at once (default: the worker's choice).

    Raises:
        TypeError, ValueError: an option is unknown, of the wrong kind or out of range.
    """

    def __init__(
        self,
        parallel: int | None = None,
        *,
        tmpdir: str | os.PathLike[str] | None = None,
        cluster: str | Any = None,
        **options: Unpack[KeywordOptions],
    ) -> None:
        self._options = make_options(parallel=parallel, **options)
        self._cluster = cluster_config(cluster, parallel)
        self._tmpdir = None if tmpdir is None else os.fspath(tmpdir)
        self._workdir: str | None = None
        self._spool: SpoolWriter | None = None
        self._payloads = itertools.count()
        """Numbers the files of big call arguments."""
        self._cleanup: Callable[[], object] | None = None
        self._running = False
        self._process: RunnerProcess | None = None
        self._skipped = 0
        self.summary: RunSummary | None = None
        """How the last run ended; None until a run has ended."""

    @property
    def parallel(self) -> int:
        """How many tasks run at once."""
        return self._options["parallel"]

    def __len__(self) -> int:
        """The number of tasks added to the next run, or to the run in progress."""
        return 0 if self._spool is None else self._spool.count

    def __repr__(self) -> str:
        state = "running" if self._running else f"{len(self)} task(s) added"
        return f"<TaskRunner parallel={self.parallel}, {state}>"

    def add(
        self,
        task_id: str | int,
        cmd: Command,
        *,
        stdin: str | bytes | None = None,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        kill_leftovers: bool | None = None,
    ) -> None:
        """Add one task to the next run, or to the run in progress.

        Args:
            task_id: the id its result will carry (a string or an integer).
            cmd: a shell command string, run by ``/bin/sh -c``; or an argv list, run
                directly with no shell involved (PATH is searched for a bare name).
            stdin: text or bytes fed to the task's stdin; default /dev/null, so a task
                never waits on a terminal it cannot see.
            env: variables set (or, with None, unset) on top of the caller's environment
                as it is when ``run()`` starts.
            cwd: the task's working directory; relative to the caller's at ``run()``.
            timeout: this task's time limit, overriding the runner's default.
            kill_leftovers: whether processes this task leaves in its group are killed
                when it ends, overriding the runner's ``kill_leftovers``.

        Raises:
            TypeError, ValueError: the task is not valid; nothing was added.
            LeanpoolError: the spool could not be written (disk full, ...).
        """
        record = command_record(
            task_id,
            cmd,
            stdin=stdin,
            env=env,
            cwd=cwd,
            timeout=timeout,
            kill_leftovers=kill_leftovers,
        )
        if self._spool is None:
            self._open_spool()
        assert self._spool is not None
        self._spool.append(record)

    def add_call(
        self,
        task_id: str | int,
        function: Callable[..., Any] | str,
        args: Iterable[object] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Add a call of a Python function to the next run, or to the run in progress.

        It runs in a warm worker process that the runner started with this
        interpreter, ``sys.path`` and working directory (never a fork of this process);
        its result's ``value`` is what it returned, ``error`` what it raised.

        Args:
            task_id: the id its result will carry (a string or an integer).
            function: a module-level function (sent by reference, as pickle does;
                functions of a script's ``__main__`` work), or a "module:function"
                string.
            args, kwargs: its arguments, pickled into the private spool now.
            timeout: seconds it may run; then its worker's process group is killed
                and a fresh worker takes the slot.

        Raises:
            TypeError: the function or an argument cannot be sent to a worker (a
                lambda, a closure, an object that does not pickle); nothing was added.
            LeanpoolError: the spool could not be written (disk full, ...).
        """
        record = call_record(task_id, function, args, kwargs, timeout, self._payload_path)
        if self._spool is None:
            self._open_spool()
        assert self._spool is not None
        try:
            self._spool.append(record)
        except LeanpoolError:
            if "pickle_file" in record:  # nothing was added: its arguments go too
                with contextlib.suppress(OSError):
                    os.unlink(str(record["pickle_file"]))
            raise

    def _payload_path(self) -> str:
        """Where the big pickled arguments of the next task go: next to the spool."""
        if self._spool is None:
            self._open_spool()
        assert self._spool is not None
        assert self._workdir is not None
        # A number of its own, never reused: an add that failed after its file was named
        # (and removed) must not leave the next add a name already taken.
        return os.path.join(self._workdir, f"call-{next(self._payloads)}.pickle")

    def cancel(self, task_id: str | int) -> None:
        """Cancel a task of the run in progress: kill it if it runs (its result says
        ``cancelled``), or give it a cancelled result instead of starting it.

        Raises:
            RuntimeError: no run is in progress.
        """
        if self._process is None:
            raise RuntimeError("cancel() works during run(); before it, just do not add the task")
        # Only a task added before now: an id used again later is another task.
        self._process.cancel(task_id, None if self._spool is None else self._spool.offset)

    def _open_spool(self) -> None:
        workdir = tempfile.mkdtemp(prefix="leanpool-", dir=self._tmpdir)  # mode 0700
        # Removes the directory if this runner is dropped without running or closing.
        self._cleanup = weakref.finalize(self, _remove_tree, workdir)
        self._workdir = workdir
        self._spool = SpoolWriter(workdir)

    def run(
        self, *, ordered: bool = False, progress: bool = False
    ) -> Generator[Result, None, None]:
        """Run every added task; yield each Result as its task ends.

        Tasks added while iterating run in this same run.  Leaving the loop early
        (``break``, an exception, closing the iterator) kills the tasks still running,
        and nothing of the run is left behind.

        Args:
            ordered: yield results in the order the tasks were added instead of as they
                finish (a slow task then holds back the results after it).
            progress: show a progress bar (tqdm.auto: a widget in Jupyter, text on a
                terminal).

        Raises:
            TaskFileError: with a journal, two tasks share an id (the tasks before the
                second one have run).
            JournalError: the journal cannot be used (see ``resume``).
            RunnerError: the runner died or broke the protocol; results not yet
                yielded are lost (the journal keeps them, if there is one).
        """
        if self._running:
            raise RuntimeError("this TaskRunner is already running")
        return self._results(ordered, progress)

    def _results(self, ordered: bool, progress: bool) -> Generator[Result, None, None]:
        # Marked running only once iterated: a run() never iterated changes nothing.
        with self._run_state(ordered) as state:
            if state is None:
                return
            runner = self._process = RunnerProcess(state.config, state.workdir)
            try:
                state.begin(runner, progress)
                spool = state.spool
                for event in runner.events():  # once per task: no more work than needed
                    if type(event) is ResultEvent:
                        yield state.result(event)
                        if spool.offset != state.announced:  # the loop body added tasks
                            state.announce()
                    else:
                        state.on_event(event)
                state.finish(runner)
            finally:
                self._process = None
                state.close_bar()
                runner.close()

    def arun(
        self, *, ordered: bool = False, progress: bool = False
    ) -> AsyncGenerator[Result, None]:
        """``run()`` for asyncio: ``async for result in runner.arun(): ...``.

        The runner's records are read through the event loop, which leanpool never
        blocks for more than a few milliseconds.  Cancelling the task that iterates
        (``asyncio.timeout``, ``wait_for``, a failing ``TaskGroup``) stops the run: every
        task group gets SIGTERM, then SIGKILL after 0.5 s, the runner exits, the spool
        is removed, and the ``CancelledError`` goes on.  Leaving the loop early does the
        same once the generator is closed: at once with
        ``async with contextlib.aclosing(runner.arun()) as results:``, else when the
        event loop finalizes the dropped generator (soon, but in another task).

        Args and Raises: as ``run()``.
        """
        if self._running:
            raise RuntimeError("this TaskRunner is already running")
        return self._aresults(ordered, progress)

    async def _aresults(self, ordered: bool, progress: bool) -> AsyncGenerator[Result, None]:
        # Imported here: asyncio is a third of leanpool's import time, and the CLI and
        # the sync API never need it.
        from ._caller.aprocess import AsyncRunnerProcess

        with self._run_state(ordered) as state:
            if state is None:
                return
            runner = AsyncRunnerProcess(state.config, state.workdir)
            self._process = runner
            try:
                state.begin(runner, progress)
                while True:
                    event = await runner.next_event()
                    if type(event) is ResultEvent:
                        yield state.result(event)
                        if state.spool.offset != state.announced:  # the loop body added tasks
                            state.announce()
                    elif isinstance(event, Ended):
                        break
                    else:
                        state.on_event(event)
                state.finish(runner)
            finally:
                self._process = None
                state.close_bar()
                await runner.aclose()

    @contextlib.contextmanager
    def _run_state(self, ordered: bool) -> Iterator[_RunState | None]:
        """Take the tasks added so far for one run; give the runner back empty after.

        Yields None when no task was added (the run is over at once)."""
        if self._running:
            raise RuntimeError("this TaskRunner is already running")
        self._running = True
        spool, workdir, cleanup = self._spool, self._workdir, self._cleanup
        try:
            if spool is None or workdir is None:
                self.summary = RunSummary(0, 0, 0, 0, 0, halted=False)
                yield None
                return
            config = runner_config(
                self._options,
                spool_path=spool.path,
                workdir=workdir,
                workers=worker_config(),
                ordered=ordered,
                cluster=self._cluster,
            )
            state = _RunState(self, spool, workdir, config)
            yield state
        finally:
            self._spool = self._workdir = self._cleanup = None
            if spool is not None:
                spool.discard()
            if cleanup is not None:
                cleanup()
            self._running = False

    def run_and_wait(
        self, callback: Callback | None = None, *, ordered: bool = False, progress: bool = False
    ) -> RunSummary:
        """Run every added task and wait for the end: the original's interface.

        Args:
            callback: called as ``callback(result, completed, total)`` for each result,
                with ``completed`` counting from 1 and ``total`` the number of tasks this
                run has to run so far (those added, less those a resumed journal already
                held).  It may ``add()`` tasks to the run.  An exception it raises stops
                the run (tasks are killed) and propagates.
            ordered: call back in the order the tasks were added.
            progress: show a progress bar.

        Returns:
            How the run ended.
        """
        results = self.run(ordered=ordered, progress=progress)
        with contextlib.closing(results):
            for completed, result in enumerate(results, 1):
                if callback is not None:
                    callback(result, completed, len(self) - self._skipped)
        assert self.summary is not None
        return self.summary

    async def arun_and_wait(
        self,
        callback: AsyncCallback | None = None,
        *,
        ordered: bool = False,
        progress: bool = False,
    ) -> RunSummary:
        """``run_and_wait()`` for asyncio; ``callback`` may be a plain function or a
        coroutine function (it is awaited)."""
        import inspect  # as asyncio above

        results = self.arun(ordered=ordered, progress=progress)
        async with contextlib.aclosing(results):
            completed = 0
            async for result in results:
                completed += 1
                if callback is not None:
                    outcome = callback(result, completed, len(self) - self._skipped)
                    if inspect.isawaitable(outcome):
                        await outcome
        assert self.summary is not None
        return self.summary

    def close(self) -> None:
        """Forget the tasks added and not run, and remove their spool.

        During a run it does nothing: the run's own end cleans up (leave its loop to
        stop it).
        """
        if self._running:
            return
        if self._spool is not None:
            self._spool.discard()
        if self._cleanup is not None:
            self._cleanup()
        self._spool = self._workdir = self._cleanup = None

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _RunState:
    """What ``run()`` and ``arun()`` share once they have a runner: telling it how far
    the spool holds tasks, turning events into Results, the bar, the summary.

    ``announced`` is the spool offset the runner was last told of.  After a result, the
    loop body may have added tasks: they are announced (``more``).  At ``idle`` for the
    latest offset, the caller is here, not in its loop body, so no task can come: input
    ends, unless one was added meanwhile (from another thread).
    """

    def __init__(
        self, owner: TaskRunner, spool: SpoolWriter, workdir: str, config: RunnerConfig
    ) -> None:
        self.owner = owner
        self.spool = spool
        self.workdir = workdir
        self.config = config
        self.announced = 0
        self.runner: RunnerProcess | None = None
        self.bar: Progress | None = None

    def begin(self, runner: RunnerProcess, progress: bool) -> None:
        self.runner = runner
        self.owner._skipped = 0
        if progress:
            self.bar = Progress(total=self.spool.count)
        self.announced = self.spool.flush()
        runner.more(self.announced)

    def result(self, event: ResultEvent) -> Result:
        """The Result of a result event.

        Raises:
            ProtocolError: its record is not a result this caller can read.
        """
        try:
            result = result_from_record(event.record)
        except ValueError as exc:
            assert self.runner is not None
            raise ProtocolError(event.line, str(exc), completed=self.runner.completed) from None
        if self.bar is not None:
            self.bar.advance(ok=result.ok)
        return result

    def on_event(self, event: Event) -> None:
        """Act on an event that carries no result."""
        runner = self.runner
        assert runner is not None
        if isinstance(event, Idle) and event.offset == self.announced:
            if self.spool.offset == self.announced:
                runner.end_input(self.announced)
            else:
                self.announce()
        elif isinstance(event, Skipped):
            self.owner._skipped = event.count
            if self.bar is not None:
                self.bar.started(event)
                self.bar.set_total(self.spool.count - event.count)

    def announce(self) -> None:
        """Tell the runner of the tasks added since it was last told."""
        assert self.runner is not None
        self.announced = self.spool.flush()
        self.runner.more(self.announced)
        if self.bar is not None:
            self.bar.set_total(self.spool.count - self.owner._skipped)

    def finish(self, runner: RunnerProcess) -> None:
        assert runner.end is not None
        self.owner.summary = _summary(runner.end, self.spool.count, runner.completed)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _summary(end: EndRecord, added: int, completed: int) -> RunSummary:
    if end["interrupted"] and not end["halted"]:
        raise RunnerError(
            f"leanpool runner was stopped by {end['stopped_by'] or 'a signal'} "
            f"with {added - end['skipped'] - completed} task(s) unfinished",
            completed=completed,
        )
    return RunSummary(
        total=added,
        skipped=end["skipped"],
        completed=end["completed"],
        failed=end["failed"],
        unfinished=added - end["skipped"] - end["completed"],
        halted=end["halted"],
        skipped_failed=end.get("skipped_failed", 0),
    )


def run_tasks(
    commands: Iterable[Command],
    *,
    parallel: int | None = None,
    timeout: float | None = None,
    check: bool = False,
) -> list[Result]:
    """Run shell commands (or argv lists) in parallel; return their Results in order.

    The simple tier over TaskRunner: ids are the commands' positions from 0.

    Args:
        commands: each a shell command string or an argv list.
        parallel: how many run at once; default twice the usable CPUs.
        timeout: seconds each command may run.
        check: raise TaskFailed for the first failed command (after all have run).

    Raises:
        TypeError: commands is a single string or bytes rather than a list of commands
            (``run_tasks("ls")`` would otherwise run ``l`` and ``s``), or a command is
            not a string or a list of strings.
        TaskFailed: with ``check``, some command did not succeed.
    """
    results = list(_filled(commands, parallel, timeout).run(ordered=True))
    if check:
        for result in results:
            result.check()
    return results


async def arun_tasks(
    commands: Iterable[Command],
    *,
    parallel: int | None = None,
    timeout: float | None = None,
    check: bool = False,
) -> list[Result]:
    """``run_tasks()`` for asyncio: the Results in order, the event loop never blocked.

    Raises: as ``run_tasks()``; cancelling it kills the commands still running.
    """
    runner = _filled(commands, parallel, timeout)
    async with contextlib.aclosing(runner.arun(ordered=True)) as ordered_results:
        results = [result async for result in ordered_results]
    if check:
        for result in results:
            result.check()
    return results


def _filled(commands: Iterable[Command], parallel: int | None, timeout: float | None) -> TaskRunner:
    if isinstance(commands, (str, bytes, bytearray, memoryview)):
        raise TypeError(
            f"commands must be a list of commands, not a single {type(commands).__name__}; "
            f"write run_tasks([{commands!r}]) to run one"
        )
    runner = TaskRunner(parallel, timeout=timeout)
    for index, command in enumerate(commands):
        runner.add(index, command)
    return runner

"""The caller's side: ``TaskRunner`` (add, then run) and ``run_tasks`` (one call)."""

from __future__ import annotations

import binascii
import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import final

from ._errors import ProtocolError, RunnerError
from ._launch import RunnerProcess, RunOptions, default_parallel
from ._result import Result, RunSummary, result_from_line
from ._spool import SpoolWriter
from ._task import InvalidTask, task_from_record

__all__ = ["TaskRunner", "run_tasks"]

Command = str | Sequence[str | os.PathLike[str]]
Callback = Callable[[Result, int, int], object]


@final
class TaskRunner:
    """A pool of shell tasks that runs in a separate, lean process.

    ``add()`` appends each task to a private temporary file as it is called, so the
    caller's memory does not grow with the number of tasks; ``run()`` starts one runner
    process that reads them back and streams each result as soon as its task ends.  The
    cost of starting a task then does not depend on how much memory the caller holds.

    Example::

        runner = TaskRunner(8)
        runner.add("task_1", "echo 1")
        runner.add("task_2", ["grep", "-c", "x", path])
        for result in runner.run():
            print(result.id, result.status, result.stdout)

    After a run ends the runner is empty again and can take a new batch, as the
    original's does.

    Args:
        parallel: how many tasks run at once; default twice the usable CPUs (the
            original's choice: tasks that wait on I/O leave the CPUs idle otherwise).
        timeout: default seconds a task may run before its whole process group gets
            SIGTERM (then SIGKILL after ``kill_grace``); None for no limit.
        kill_grace: seconds between SIGTERM and SIGKILL for a timed-out task.
        max_output: keep at most this many bytes of each stream of each task (the rest
            is read and dropped, and the result says so); None keeps everything, since
            silently cutting output is worse than using memory.
        output_dir: write each task's streams to ``<id>.stdout``/``<id>.stderr`` files
            in this directory instead of returning them: for tasks with huge output.
        retries: run a failed or timed-out task again up to this many times.
        retry_delay: seconds to wait before each retry.
        halt: stop starting tasks once this many have failed (GNU parallel's --halt).
        halt_now: with ``halt``, also kill the tasks still running.
        journal: append every result to this JSONL file as soon as its task ends,
            durably, from the runner itself: a killed caller loses no finished result.
        resume: skip the tasks whose id already has a record in ``journal``.
        tmpdir: where the private spool directory is made; default: tempfile's choice.

    Raises:
        TypeError, ValueError: an argument is of the wrong kind or out of range.
    """

    def __init__(
        self,
        parallel: int | None = None,
        *,
        timeout: float | None = None,
        kill_grace: float = 2.0,
        max_output: int | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        halt: int | None = None,
        halt_now: bool = False,
        journal: str | os.PathLike[str] | None = None,
        resume: bool = False,
        tmpdir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._options = RunOptions(
            parallel=default_parallel() if parallel is None else parallel,
            timeout=timeout,
            kill_grace=kill_grace,
            max_output=max_output,
            output_dir=None if output_dir is None else os.fspath(output_dir),
            retries=retries,
            retry_delay=retry_delay,
            halt=halt,
            halt_now=halt_now,
            journal=None if journal is None else os.fspath(journal),
            resume=resume,
        )
        self._tmpdir = None if tmpdir is None else os.fspath(tmpdir)
        self._workdir: str | None = None
        self._spool: SpoolWriter | None = None
        self._cleanup: Callable[[], object] | None = None
        self._running = False
        self._to_run = 0
        self.summary: RunSummary | None = None
        """How the last run ended; None until a run has ended."""

    @property
    def parallel(self) -> int:
        """How many tasks run at once."""
        return self._options.parallel

    def __len__(self) -> int:
        """The number of tasks added since the last run."""
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
    ) -> None:
        """Add one task to the next run.

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

        Raises:
            RuntimeError: a run is in progress.
            TypeError, ValueError: the task is not valid; nothing was added.
            LeanpoolError: the spool could not be written (disk full, ...).
        """
        if self._running:
            raise RuntimeError("cannot add tasks while a run is in progress")
        record: dict[str, object] = {"id": task_id}
        if isinstance(cmd, str):
            record["cmd"] = cmd
        elif isinstance(cmd, Sequence):
            record["cmd"] = [os.fspath(part) for part in cmd]
        else:
            raise TypeError(f"cmd must be a string or a list of strings, not {type(cmd).__name__}")
        if stdin is not None:
            if isinstance(stdin, str):
                record["stdin"] = stdin
            elif isinstance(stdin, (bytes, bytearray, memoryview)):
                data = bytes(stdin)
                try:
                    record["stdin"] = data.decode("utf-8")
                except UnicodeDecodeError:
                    record["stdin_b64"] = _b64(data)
            else:
                raise TypeError(f"stdin must be str or bytes, not {type(stdin).__name__}")
        if env is not None:
            record["env"] = dict(env)
        if cwd is not None:
            record["cwd"] = os.fspath(cwd)
        if timeout is not None:
            record["timeout"] = timeout
        try:
            task_from_record(record, 0)
        except InvalidTask as exc:
            raise (TypeError if exc.wrong_type else ValueError)(exc.reason) from None
        if self._spool is None:
            self._open_spool()
        assert self._spool is not None
        self._spool.append(record)

    def _open_spool(self) -> None:
        workdir = tempfile.mkdtemp(prefix="leanpool-", dir=self._tmpdir)  # mode 0700
        # Removes the directory if this runner is dropped without running or closing.
        self._cleanup = weakref.finalize(self, _remove_tree, workdir)
        self._workdir = workdir
        self._spool = SpoolWriter(workdir)

    def run(self, *, ordered: bool = False) -> Generator[Result, None, None]:
        """Run every added task; yield each Result as its task ends.

        Leaving the loop early (``break``, an exception, closing the iterator) kills
        the tasks still running, and nothing of the run is left behind.

        Args:
            ordered: yield results in the order the tasks were added instead of as they
                finish (a slow task then holds back the results after it).

        Raises:
            TaskFileError: a task is invalid (only a task file written by hand can be).
            JournalError: the journal cannot be used (see ``resume``).
            RunnerError: the runner died or broke the protocol; results not yet
                yielded are lost (the journal keeps them, if there is one).
        """
        if self._running:
            raise RuntimeError("this TaskRunner is already running")
        self._running = True
        spool, workdir, cleanup = self._spool, self._workdir, self._cleanup
        self._spool = self._workdir = self._cleanup = None
        return self._results(spool, workdir, cleanup, ordered)

    def _results(
        self,
        spool: SpoolWriter | None,
        workdir: str | None,
        cleanup: Callable[[], object] | None,
        ordered: bool,
    ) -> Generator[Result, None, None]:
        try:
            if spool is None or workdir is None:
                self.summary = RunSummary(0, 0, 0, 0, 0, halted=False)
                return
            spool.finish()
            config = self._options.config(
                spool.path, "jsonl", ordered=ordered, cleanup_dir=workdir, spill_dir=workdir
            )
            runner = RunnerProcess(config, workdir)
            try:
                for line in runner.lines(on_start=self._on_start):
                    try:
                        yield result_from_line(line)
                    except ValueError as exc:
                        raise ProtocolError(line, str(exc), completed=runner.completed) from None
                self.summary = _summary(runner)
            finally:
                runner.close()
        finally:
            if spool is not None:
                spool.discard()
            if cleanup is not None:
                cleanup()
            self._running = False

    def _on_start(self, total: int, skipped: int) -> None:
        self._to_run = total - skipped

    def run_and_wait(
        self, callback: Callback | None = None, *, ordered: bool = False
    ) -> RunSummary:
        """Run every added task and wait for the end: the original's interface.

        Args:
            callback: called as ``callback(result, completed, total)`` for each result,
                with ``completed`` counting from 1 and ``total`` the number of tasks this
                run has to run (those added, less those a resumed journal already holds).
                An exception it raises stops the run (tasks are killed) and propagates.
            ordered: call back in the order the tasks were added.

        Returns:
            How the run ended.
        """
        results = self.run(ordered=ordered)
        with contextlib.closing(results):
            for completed, result in enumerate(results, 1):
                if callback is not None:
                    callback(result, completed, self._to_run)
        assert self.summary is not None
        return self.summary

    def close(self) -> None:
        """Forget the tasks added and not run, and remove their spool."""
        if self._spool is not None:
            self._spool.discard()
        if self._cleanup is not None:
            self._cleanup()
        self._spool = self._workdir = self._cleanup = None

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _summary(runner: RunnerProcess) -> RunSummary:
    end = runner.end
    assert end is not None
    if end.get("interrupted") and not end.get("halted"):
        raise RunnerError(
            f"leanpool runner was stopped by {end.get('stopped_by') or 'a signal'} "
            f"with {end.get('unfinished')} task(s) unfinished",
            completed=runner.completed,
        )
    return RunSummary(
        total=int(runner.total or 0),
        skipped=runner.skipped,
        completed=int(end["completed"]),  # type: ignore[call-overload]
        failed=int(end["failed"]),  # type: ignore[call-overload]
        unfinished=int(end["unfinished"]),  # type: ignore[call-overload]
        halted=bool(end["halted"]),
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
        TaskFailed: with ``check``, some command did not succeed.
    """
    runner = TaskRunner(parallel, timeout=timeout)
    for index, command in enumerate(commands):
        runner.add(index, command)
    results = list(runner.run(ordered=True))
    if check:
        for result in results:
            result.check()
    return results

"""``leanpool.Executor``: a real concurrent.futures.Executor over real workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from leanpool import Executor, Result, TaskFailed
from leanpool._errors import RemoteTraceback
from tests.helpers import PY, alive, runner_pids, wait_for, wait_gone
from tests.integration import calls_funcs as funcs


def test_submit_and_map() -> None:
    with Executor(max_workers=2) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        future = ex.submit(funcs.echo, 1, key="v")
        assert future.result(timeout=30) == [[1], {"key": "v"}]
        assert list(ex.map(funcs.square, range(20))) == [i * i for i in range(20)]
        assert list(ex.map(funcs.echo, "ab", [1, 2, 3])) == [[["a", 1], {}], [["b", 2], {}]]


def test_map_is_lazy_over_an_endless_iterator() -> None:
    with Executor(max_workers=2) as ex:
        values = ex.map(funcs.square, itertools.count(), buffersize=4)
        assert [next(values) for _ in range(10)] == [i * i for i in range(10)]
        values.close()  # the calls in flight are cancelled


def test_leaving_map_early_kills_the_calls_in_flight(tmp_path: Path) -> None:
    """As documented (concurrent.futures' own map lets running calls finish): closing
    the generator cancels the calls submitted ahead and kills those that run, so that
    none of them runs to its end once the caller stopped wanting its value."""
    marks = tmp_path / "marks"
    marks.mkdir()
    # Calls 1 and 2 run when the loop is left, call 3 waits for a worker.  Their naps
    # only need to outlast the moment between "both started" and close(), on a loaded
    # machine (close and shutdown: 0.01-0.02 s measured, after a wait_for of 0.01-0.05 s);
    # on the code that lets them run, shutdown waits them out (2 x 5 s).
    naps = [0.0, 5.0, 5.0, 5.0]
    ex = Executor(max_workers=2)
    values = ex.map(funcs.nap_and_mark, naps, itertools.repeat(str(marks)), range(4))
    assert next(values) == 0
    wait_for(
        lambda: {"started-1", "started-2"} <= {p.name for p in marks.iterdir()},
        20,
        "two calls to run",
    )
    values.close()
    ex.shutdown(wait=True)  # once it returns, every call has ended, one way or the other
    assert sorted(p.name for p in marks.iterdir()) == [
        "done-0",
        "started-0",
        "started-1",
        "started-2",
    ]


def test_map_timeout_raises_timeout_error() -> None:
    with Executor(max_workers=1) as ex:
        # 100 calls of 0.05 s on one worker take 5 s at least: 0.3 s always falls inside.
        values = ex.map(funcs.slow_square, range(100), timeout=0.3)
        with pytest.raises(TimeoutError):
            list(values)


def test_a_future_raises_the_original_exception_with_the_remote_traceback() -> None:
    with Executor(max_workers=1) as ex:
        future = ex.submit(funcs.raise_custom, "mine")
        with pytest.raises(funcs.CustomError, match="mine") as info:
            future.result(timeout=30)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise CustomError(message)" in str(cause)


def test_a_crash_fails_one_future_and_the_executor_goes_on() -> None:
    with Executor(max_workers=2) as ex:
        futures = [ex.submit(funcs.square, i) for i in range(10)]
        crash = ex.submit(funcs.segfault)
        more = [ex.submit(funcs.square, i) for i in range(10, 20)]
        with pytest.raises(TaskFailed, match="SIGSEGV"):
            crash.result(timeout=30)
        assert [f.result(timeout=30) for f in futures + more] == [i * i for i in range(20)]
        assert ex.submit(funcs.square, 3).result(timeout=30) == 9


def test_a_call_past_its_timeout_is_killed_and_raises_timeout_error(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    with Executor(max_workers=1, timeout=0.5) as ex:
        future = ex.submit(funcs.sleep_with_child, 30, str(pid_file))
        # Raised once the call's 0.5 s are up: 0.59-0.80 s after the submit, loaded.
        # result()'s own wait raises TimeoutError too, and leaves the future pending: with
        # the call's timeout ignored, this test passed that way (after 10 s).
        with pytest.raises(TimeoutError):
            future.result(timeout=5)
        assert future.done(), "result() gave up waiting: the call itself was not timed out"
        assert ex.submit(funcs.square, 2).result(timeout=30) == 4
    wait_gone(list(map(int, pid_file.read_text().split())), 2.0)  # 0.000 s; else 60 s


def test_cancel_a_pending_future_and_kill_a_running_one(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    with Executor(max_workers=1) as ex:
        running = ex.submit(funcs.sleep_with_child, 30, str(pid_file))
        pending = ex.submit(funcs.square, 2)
        wait_for(pid_file.exists, 10, "the call to start")
        assert pending.cancel()
        assert pending.cancelled()
        assert running.cancel()  # unlike ProcessPoolExecutor: it kills the call
        assert running.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(timeout=1)
        wait_gone(list(map(int, pid_file.read_text().split())), 2.0)  # 0.011 s; else 60 s
        assert ex.submit(funcs.square, 5).result(timeout=30) == 25
        done = ex.submit(funcs.square, 1)
        done.result(timeout=30)
        assert not done.cancel()


def test_shutdown_cancel_futures_kills_what_runs(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    ex = Executor(max_workers=1)
    running = ex.submit(funcs.sleep_with_child, 30, str(pid_file))
    pending = [ex.submit(funcs.square, i) for i in range(5)]
    wait_for(pid_file.exists, 10, "the call to start")
    start = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    # 0.02-0.03 s loaded; a running call not killed is waited for: its 30 s.
    assert time.monotonic() - start < 3
    assert running.cancelled()
    assert all(f.cancelled() for f in pending)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(funcs.square, 1)
    wait_gone(list(map(int, pid_file.read_text().split())), 2.0)  # 0.000 s; else 60 s


def test_shutdown_waits_for_what_was_submitted() -> None:
    ex = Executor(max_workers=2)
    futures = [ex.submit(funcs.slow_square, i) for i in range(6)]
    ex.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(6)]


def test_what_cannot_be_sent_is_a_type_error_at_submit() -> None:
    with Executor(max_workers=1) as ex:
        with pytest.raises(TypeError, match="lambda"):
            ex.submit(lambda: 1)
        assert ex.submit(funcs.square, 3).result(timeout=30) == 9


def test_a_refused_first_submit_leaves_nothing_behind() -> None:
    ex = Executor(max_workers=1)
    with pytest.raises(TypeError):
        ex.submit(funcs.echo, funcs.Unpicklable())
    ex.shutdown()  # the fixtures prove no directory, runner or worker is left


def test_big_arguments_and_values() -> None:
    data = funcs.big(2 << 20)
    with Executor(max_workers=2) as ex:
        assert ex.submit(len, data).result(timeout=30) == len(data)
        assert ex.submit(funcs.big, 3 << 20).result(timeout=30) == funcs.big(3 << 20)


def bytes_under(directory: Path) -> int:
    """Bytes of the files under directory now."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def test_a_big_values_spill_file_is_removed_once_read(private_tmpdir: Path) -> None:
    """A value of 64 KiB or more comes back through a file in the run's private
    directory, which the caller removes once it has read it: a long-lived executor's
    disk use does not grow with the values it has returned."""
    size = 256 << 10  # pickled, well over the 64 KiB from which a value is spilled
    with Executor(max_workers=1) as ex:
        for _ in range(4):
            assert ex.submit(funcs.big, size).result(timeout=30) == funcs.big(size)
        assert bytes_under(private_tmpdir) < 64 << 10  # the spool's few lines only


def test_a_big_arguments_file_is_removed_once_its_call_is_done(private_tmpdir: Path) -> None:
    """Arguments of 64 KiB or more go to the worker through a file in the run's private
    directory, removed once the call's result has come: an executor that lives long
    does not keep every big argument it was given on disk."""
    data = funcs.big(256 << 10)
    with Executor(max_workers=1) as ex:
        for _ in range(4):
            assert ex.submit(len, data).result(timeout=30) == len(data)
        # The result is set after the file is removed; the spool's few lines remain.
        assert bytes_under(private_tmpdir) < 64 << 10


def test_cancelling_a_call_whose_worker_is_starting_cancels_only_that_call(
    tmp_path: Path,
) -> None:
    """A worker killed before it was ready, because its call was cancelled, is not a
    worker that cannot start (which ends the run with one error): the other calls go
    on.  The workers' preload waits for a go file, so they are surely still starting."""
    starts, go = tmp_path / "starts", tmp_path / "go"
    starts.mkdir()
    (tmp_path / "gatedpreload.py").write_text(
        textwrap.dedent(
            f"""
            import os, time
            open(os.path.join({str(starts)!r}, str(os.getpid())), "w").close()
            deadline = time.monotonic() + 30  # a bound, should the test never say go
            while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
                time.sleep(0.005)
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        with Executor(max_workers=2, preload=["gatedpreload"]) as ex:
            first, second, third = (ex.submit(funcs.square, i) for i in (2, 3, 4))
            wait_for(lambda: len(list(starts.iterdir())) == 2, 20, "two workers to start")
            starting = [int(p.name) for p in starts.iterdir()]
            assert first.cancel()
            wait_for(
                lambda: not all(alive(pid) for pid in starting),
                10,
                "the cancelled call's worker to be killed in its preload",
            )
            go.touch()
            assert second.result(timeout=30) == 9
            assert third.result(timeout=30) == 16  # on a worker started after the cancel
            assert ex.submit(funcs.square, 5).result(timeout=30) == 25
    finally:
        sys.path.remove(str(tmp_path))
    assert first.cancelled()


def test_sys_exit_in_a_call_raises_system_exit_and_the_worker_lives_on() -> None:
    with Executor(max_workers=1) as ex:
        before = ex.submit(funcs.pid).result(timeout=30)
        with pytest.raises(SystemExit) as info:
            ex.submit(funcs.call_sys_exit, 3).result(timeout=30)
        assert info.value.code == 3
        assert ex.submit(funcs.pid).result(timeout=30) == before  # the same worker


def test_a_submit_after_shutdown_writes_nothing() -> None:
    """Big arguments go to a file: after shutdown, none is written (the fixtures prove
    the temporary directory gone), and the error is the documented one."""
    data = funcs.big(1 << 20)
    unused = Executor(max_workers=1)
    unused.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        unused.submit(len, data)
    used = Executor(max_workers=1)
    assert used.submit(len, data).result(timeout=30) == len(data)
    used.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        used.submit(len, data)


def test_a_cancel_racing_the_collector_leaves_the_executor_working(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: a cancel() landing between the collector's done() check and its
    set_exception() broke the whole Executor (InvalidStateError in its thread).  The
    window is widened here by slowing the collector's own step, not the OS."""
    import leanpool._executor as executor_module

    real = executor_module._exception_of
    entered = threading.Event()

    def slow(result: Result) -> BaseException:
        entered.set()
        time.sleep(0.3)
        return real(result)

    monkeypatch.setattr(executor_module, "_exception_of", slow)
    with Executor(max_workers=1) as ex:
        future = ex.submit(funcs.raise_value, "x")
        assert entered.wait(30)
        assert future.cancel()  # the collector is between its check and its set
        time.sleep(0.5)
        assert ex.submit(funcs.square, 3).result(timeout=30) == 9


def test_works_with_run_in_executor() -> None:
    async def main(ex: Executor) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(ex, funcs.square, i) for i in range(5)))
        )

    with Executor(max_workers=2) as ex:
        assert asyncio.run(main(ex)) == [0, 1, 4, 9, 16]


def test_submits_from_many_threads() -> None:
    with Executor(max_workers=2) as ex, concurrent.futures.ThreadPoolExecutor(4) as threads:
        batches = threads.map(
            lambda base: [ex.submit(funcs.square, base + i) for i in range(50)], range(0, 200, 50)
        )
        futures = [f for batch in batches for f in batch]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(200)]


def test_a_dead_runner_breaks_the_executor_and_every_waiting_future(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    ex = Executor(max_workers=1)
    running = ex.submit(funcs.sleep_with_child, 30, str(pid_file))
    waiting = ex.submit(funcs.square, 2)
    wait_for(pid_file.exists, 10, "the call to start")
    runner = next(p for p in runner_pids())
    os.kill(runner, signal.SIGKILL)
    for future in (running, waiting):
        with pytest.raises(concurrent.futures.BrokenExecutor, match="runner"):
            future.result(timeout=10)
    with pytest.raises(concurrent.futures.BrokenExecutor):
        ex.submit(funcs.square, 3)
    ex.shutdown()
    # Swept, no orphan: gone by then (0.000 s); without the sweep, the child's 60 s.
    wait_gone(list(map(int, pid_file.read_text().split())), 2.0)


def test_an_executor_never_used_starts_nothing() -> None:
    with Executor(max_workers=2) as ex:
        assert ex.max_workers == 2


def test_a_dropped_executor_ends_its_run() -> None:
    ex = Executor(max_workers=1)
    assert ex.submit(funcs.square, 2).result(timeout=30) == 4
    del ex  # the leak check (conftest) proves the runner and workers are gone


FORKS = textwrap.dedent(
    """
    import os, sys
    import leanpool
    from tests.integration.calls_funcs import square
    done = leanpool.Executor(1)
    done.submit(square, 1).result()
    done.shutdown()  # still referenced: its runner once stayed in the fork hook's list
    live = leanpool.Executor(1)
    live.submit(square, 2).result()
    stdin_fd = live._session._runner._stdin.fileno()
    pid = os.fork()
    if pid == 0:
        try:
            os.fstat(stdin_fd)
        except OSError:
            os._exit(0)  # closed in the child, as it must be
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    live.shutdown()
    print(os.waitstatus_to_exitcode(status))
    """
)


def test_a_fork_child_holds_no_runner_of_ours_whatever_was_shut_down() -> None:
    """Regression: the at-fork hook raised ValueError on a shut-down executor's runner
    and stopped, leaving a live runner's stdin open in the child (it would never see
    EOF if the parent died)."""
    proc = subprocess.run(
        [PY, "-c", FORKS], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2]
    )
    assert proc.stdout == "0\n", proc.stderr
    assert "Traceback" not in proc.stderr

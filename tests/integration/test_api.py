"""TaskRunner end to end, with real processes and pipes."""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from leanpool import Result, TaskRunner, run_tasks
from tests.helpers import FLOODS_STDOUT, PRINTS_OPEN_FDS, PY


def run_all(runner: TaskRunner, **kw: bool) -> dict[str | int, Result]:
    return {result.id: result for result in runner.run(**kw)}


def test_original_readme_example(exit_watch: str) -> None:
    """100 tasks `echo i`: outputs sum to 4950; the callback counts 1..100 of 100."""
    runner = TaskRunner(8)
    for i in range(100):
        runner.add(f"task_{i}", f"echo {i}")
    calls: list[tuple[int, int]] = []
    outputs: list[int] = []

    def callback(result: Result, completed: int, total: int) -> None:
        outputs.append(int(result.stdout))
        calls.append((completed, total))

    summary = runner.run_and_wait(callback)
    assert sum(outputs) == 4950
    assert calls == [(i, 100) for i in range(1, 101)]
    assert (summary.total, summary.completed, summary.failed) == (100, 100, 0)


def test_original_deadlock_example_finishes() -> None:
    """The original hangs once a task writes more than a pipe buffer (64 KiB)."""
    runner = TaskRunner(2)
    runner.add("big", f"head -c {64 * 1024 + 1} /dev/zero")
    (result,) = runner.run()
    assert result.ok
    assert result.stdout_bytes == b"\0" * (64 * 1024 + 1)


def test_megabytes_of_stdout_and_stderr_both_arrive_whole(exit_watch: str) -> None:
    runner = TaskRunner(4)
    runner.add("out", FLOODS_STDOUT)
    runner.add("err", f"{FLOODS_STDOUT} >&2")
    runner.add("both", "head -c 3000000 /dev/urandom | od -An | tee /dev/stderr | wc -c")
    results = run_all(runner)
    assert len(results["out"].stdout_bytes) == 5_000_000
    assert results["out"].stderr == ""
    assert len(results["err"].stderr_bytes) == 5_000_000
    both = results["both"]
    assert len(both.stderr) == int(both.stdout)


def test_non_utf8_bytes_round_trip_exactly() -> None:
    every_byte = bytes(range(256))
    runner = TaskRunner(2)
    runner.add("bin", [PY, "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 3)"])
    runner.add("err", "printf 'caf\\351\\n' >&2")
    results = run_all(runner)
    assert results["bin"].stdout_bytes == every_byte * 3
    assert "\ufffd" in results["bin"].stdout
    assert results["err"].stderr_bytes == b"caf\xe9\n"


def test_exit_codes_and_signal_deaths(exit_watch: str) -> None:
    runner = TaskRunner(4)
    runner.add("zero", "true")
    runner.add("three", "exit 3")
    runner.add("term", "kill -TERM $$")
    runner.add("kill", "kill -KILL $$")
    results = run_all(runner)
    assert (results["zero"].status, results["zero"].ok) == (0, True)
    assert (results["three"].status, results["three"].ok) == (3, False)
    assert (results["term"].status, results["term"].signal) == (-15, "SIGTERM")
    assert (results["kill"].status, results["kill"].signal) == (-9, "SIGKILL")
    assert not results["kill"].ok
    assert not results["kill"].timed_out


def test_argv_tasks_get_no_shell_interpretation(tmp_path: Path) -> None:
    marker = tmp_path / "should-not-exist"
    runner = TaskRunner(2)
    runner.add("argv", ["echo", "$HOME", "*", "; touch", str(marker), "`id`"])
    (result,) = runner.run()
    assert result.stdout == f"$HOME * ; touch {marker} `id`\n"
    assert not marker.exists()


def test_stdin_env_and_cwd(tmp_path: Path, exit_watch: str) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "here.txt").write_text("x")
    runner = TaskRunner(4)
    runner.add("stdin", "wc -c", stdin="hello")
    runner.add(
        "bytes", [PY, "-c", "import sys; print(sys.stdin.buffer.read().hex())"], stdin=b"\x00\xff"
    )
    runner.add("big-stdin", "wc -c", stdin=b"y" * 1_000_000)
    runner.add(
        "env", "echo $LANG-$EXTRA-${HOME:-unset}", env={"LANG": "C", "EXTRA": "1", "HOME": None}
    )
    runner.add("cwd", "ls", cwd=workdir)
    runner.add("no-stdin", "cat")  # /dev/null: ends at once instead of waiting on a terminal
    results = run_all(runner)
    assert results["stdin"].stdout.strip() == "5"
    assert results["bytes"].stdout.strip() == "00ff"
    assert results["big-stdin"].stdout.strip() == "1000000"
    assert results["env"].stdout == "C-1-unset\n"
    assert results["cwd"].stdout == "here.txt\n"
    assert results["no-stdin"].ok
    assert results["no-stdin"].stdout == ""


def test_tasks_are_children_of_the_runner_not_the_caller() -> None:
    runner = TaskRunner(2)
    runner.add("ppid", "cat /proc/$PPID/cmdline | tr '\\0' ' '; echo; echo $PPID")
    (result,) = runner.run()
    cmdline, ppid = result.stdout.splitlines()
    assert int(ppid) != os.getpid()
    assert "leanpool._runner" in cmdline
    assert cmdline.split()[1:3] == ["-I", "-S"]


def test_tasks_inherit_only_stdin_stdout_stderr() -> None:
    runner = TaskRunner(2)
    runner.add("fds", [PY, "-I", "-c", PRINTS_OPEN_FDS])
    runner.add("fds-stdin", [PY, "-I", "-c", PRINTS_OPEN_FDS], stdin="x")
    for result in runner.run():
        assert ast.literal_eval(result.stdout) == [0, 1, 2], result


def test_each_task_has_its_own_session() -> None:
    runner = TaskRunner(2)
    runner.add("ids", [PY, "-c", "import os; print(os.getpid(), os.getpgrp(), os.getsid(0))"])
    (result,) = runner.run()
    pid, pgid, sid = map(int, result.stdout.split())
    assert pid == pgid == sid


def test_spool_is_private_and_removed(private_tmpdir: Path) -> None:
    runner = TaskRunner(2)
    runner.add(1, "true")
    spool = runner._spool  # private: the test looks at the file the caller wrote
    assert spool is not None
    assert stat.S_IMODE(os.stat(spool.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(spool.path)).st_mode) == 0o700
    list(runner.run())
    assert not list(private_tmpdir.iterdir())


def test_ordered_results_follow_task_order() -> None:
    runner = TaskRunner(4)
    for i in range(8):
        runner.add(i, f"sleep 0.0{8 - i}; echo {i}")
    assert [r.id for r in runner.run(ordered=True)] == list(range(8))


def test_a_task_added_during_a_run_runs_in_it_and_the_runner_is_reusable() -> None:
    runner = TaskRunner(2)
    runner.add(1, "echo 1")
    results = runner.run()
    assert next(results).stdout == "1\n"
    runner.add(2, "echo 2")  # from the loop body: the same run
    assert [r.stdout for r in results] == ["2\n"]
    assert runner.summary is not None
    assert (runner.summary.total, runner.summary.completed) == (2, 2)
    runner.add(3, "echo 3")  # after the run: a new batch
    assert [r.stdout for r in runner.run()] == ["3\n"]
    assert list(runner.run()) == []


def test_max_output_caps_and_flags() -> None:
    runner = TaskRunner(2, max_output=10)
    runner.add("big", FLOODS_STDOUT)
    runner.add("small", "echo hi")
    results = run_all(runner)
    assert results["big"].stdout_bytes == b"\0" * 10
    assert results["big"].stdout_truncated
    assert results["big"].ok
    assert not results["small"].stdout_truncated


def test_output_dir_keeps_huge_output_out_of_memory(tmp_path: Path, exit_watch: str) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    runner = TaskRunner(2, output_dir=tmp_path)
    runner.add("a/b", "head -c 3000000 /dev/zero; echo oops >&2")
    runner.add("plain", "echo hi")
    results = run_all(runner)
    big = results["a/b"]
    assert big.stdout == ""
    assert big.stdout_file == str(tmp_path / "a%2Fb.stdout")
    assert os.path.getsize(big.stdout_file) == 3_000_000
    assert Path(big.stderr_file or "").read_text() == "oops\n"
    assert (tmp_path / "plain.stdout").read_text() == "hi\n"


def test_run_tasks_simple_tier() -> None:
    results = run_tasks(["echo a", ["echo", "b"], "exit 2"], parallel=2)
    assert [(r.id, r.stdout, r.status) for r in results] == [
        (0, "a\n", 0),
        (1, "b\n", 0),
        (2, "", 2),
    ]
    with pytest.raises(Exception, match="task 0 failed: exit status 1"):
        run_tasks(["false"], check=True)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"task_id": 1.5, "cmd": "x"}, TypeError),
        ({"task_id": 1, "cmd": 5}, TypeError),
        ({"task_id": 1, "cmd": ""}, ValueError),
        ({"task_id": 1, "cmd": "x", "timeout": 0}, ValueError),
        ({"task_id": 1, "cmd": "x", "stdin": 5}, TypeError),
    ],
)
def test_add_refuses_bad_tasks_at_once(kwargs: dict[str, object], error: type[Exception]) -> None:
    runner = TaskRunner(2)
    with pytest.raises(error):
        runner.add(**kwargs)  # type: ignore[arg-type]
    assert len(runner) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parallel": 0}, "parallel must be at least 1"),
        ({"parallel": "8"}, "parallel must be an integer"),
        ({"timeout": -1}, "timeout must be at least"),
        ({"resume": True}, "resume needs a journal"),
    ],
)
def test_constructor_validates_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        TaskRunner(**kwargs)  # type: ignore[arg-type]


def test_runner_imports_nothing_but_the_standard_library(runner_path: str) -> None:
    """The runner process must stay lean: no API, no CLI, no third-party module, and
    nothing that could unpickle."""
    import subprocess

    from leanpool._caller.process import BOOTSTRAP, runner_command

    probe = BOOTSTRAP.replace(
        "sys.exit(main(sys.argv[2:]))", "import sys as s;print(sorted(s.modules))"
    )
    argv = runner_command({})  # type: ignore[typeddict-item]
    argv[argv.index("-c") + 1] = probe
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    modules = set(ast.literal_eval(out))
    ours = {m for m in modules if m.split(".")[0] == "leanpool"}
    allowed_rooms = ("leanpool._runner", "leanpool._protocol")
    assert all(
        m in ("leanpool", "leanpool._errors") or m.startswith(allowed_rooms) for m in ours
    ), ours
    assert "leanpool._runner.loop" in ours  # the probe did import the runner
    assert not {m for m in ours if m.startswith("leanpool._protocol.reader")}
    stdlib = sys.stdlib_module_names | {"__main__"}
    foreign = {m for m in modules - ours if m.split(".")[0] not in stdlib}
    assert not foreign, foreign
    # Calls: the runner forwards pickles as opaque text; only a worker unpickles.
    assert (
        not {"leanpool._api", "leanpool._cli", "leanpool._worker", "tqdm", "pickle", "_pickle"}
        & modules
    )
    assert "leanpool._runner.calls" in ours
    # Start-up time: traceback (with linecache and tokenize) only on an unexpected failure.
    assert "traceback" not in modules
    # Its C engine is part of its own package (tests/unit/test_engine.py: it links
    # nothing but the C library).
    built = importlib.util.find_spec("leanpool._runner._engine") is not None
    assert ("leanpool._runner._engine" in ours) == (built and runner_path == "engine")


def test_an_unexpected_runner_failure_is_one_fatal_record_and_a_traceback() -> None:
    """A failure the runner has no words for (here, a config whose ``parallel`` is not a
    number: the library's callers check it, the runner trusts it) still ends in one
    ``fatal`` record on stdout, and its traceback goes to stderr."""
    import subprocess

    from leanpool._caller.process import runner_command

    config = {"input": {"path": "/dev/null", "format": "jsonl", "stream": True}}
    argv = runner_command({**config, "options": {"parallel": "two"}})  # type: ignore[typeddict-item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()
    record = json.loads(line)
    assert record["leanpool"] == "fatal"
    assert record["error"] == "runner"
    assert record["message"].startswith("TypeError: ")
    assert "Traceback (most recent call last)" in done.stderr
    assert record["message"] in done.stderr


def test_task_that_closes_its_pipes_before_exiting(exit_watch: str) -> None:
    """EOF on both pipes does not mean the task is done: its status must still be waited for."""
    runner = TaskRunner(2)
    runner.add("late", "exec >&- 2>&-; sleep 0.3; exit 7")
    (result,) = runner.run()
    assert result.status == 7
    # A floor: 0.30-0.33 s measured, once 0.2998 (engine, SIGCHLD path, loaded); ended at
    # the pipes' EOF it would be ~0.01 s, so 0.25 tells the two apart with room.
    assert result.duration >= 0.25


def test_thousands_of_results_are_each_exact(exit_watch: str) -> None:
    """Regression test: a stale epoll registration of a closed pipe (the vfork child held
    a copy a moment longer) made a later task that reused the number look hung up, and
    a few results in a thousand came back empty."""
    runner = TaskRunner(16)
    for i in range(2000):  # tasks of uneven length, so that pipes close amid new spawns
        runner.add(i, f"sleep 0.00$(($$ % 9)); echo {i}")
    wrong = [r for r in runner.run() if r.stdout != f"{r.id}\n" or r.status != 0]
    assert wrong == []


def test_big_outputs_travel_as_files_and_arrive_exact(tmp_path: Path, private_tmpdir: Path) -> None:
    """Outputs of 64 KiB and more skip JSON: the runner spills them to the run's private
    directory, and the caller reads and removes each file as it builds the Result."""
    journal = tmp_path / "journal.jsonl"
    runner = TaskRunner(2, journal=journal)
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1000)"
    runner.add("binary", [PY, "-c", script])
    runner.add("text", "head -c 200000 /dev/zero | tr '\\0' y; echo small >&2")
    results = run_all(runner)
    assert results["binary"].stdout_bytes == bytes(range(256)) * 1000
    assert results["binary"].stdout.count("\ufffd") == 128 * 1000
    assert results["text"].stdout == "y" * 200_000
    assert results["text"].stderr == "small\n"
    # The journal keeps every byte inline, since it must outlive the run's files.
    records = {r["id"]: r for r in map(json.loads, journal.read_text().splitlines())}
    assert records["text"]["stdout"] == "y" * 200_000
    assert "stdout_spill" not in records["text"]
    assert base64.b64decode(records["binary"]["stdout_b64"]) == bytes(range(256)) * 1000


# -- cancel ----------------------------------------------------------------------------------


def test_a_cancel_is_for_the_tasks_added_before_it_never_a_later_one_of_the_same_id(
    tmp_path: Path, exit_watch: str
) -> None:
    """cancel("x") after x's result, then add("x"): the new x runs (the cancel once
    waited for the id for the whole run and took it).  A task added before its cancel
    and not started yet is cancelled."""
    runner = TaskRunner(1)
    runner.add("x", "echo first")
    results = []
    for result in runner.run():
        results.append((result.id, result.ok, result.cancelled, result.stdout))
        if result.id == "x" and result.stdout == "first\n":
            runner.cancel("x")  # it is done: nothing to cancel
            runner.add("x", "echo second")
            runner.add("later", "echo never")
            runner.cancel("later")  # added before the cancel, not started: cancelled
    by_id: dict[str | int, list[tuple[bool, bool, str]]] = {}
    for task_id, ok, cancelled, stdout in results:
        by_id.setdefault(task_id, []).append((ok, cancelled, stdout))
    assert by_id["x"] == [(True, False, "first\n"), (True, False, "second\n")]
    assert by_id["later"] == [(False, True, "")]


def test_a_cancel_reaches_a_retry_that_waits(tmp_path: Path) -> None:
    """A task that failed and waits for its retry when the cancel comes: the retry is
    cancelled, though lines added after the cancel were read before the retry came up."""
    runner = TaskRunner(2, retries=3, retry_delay=1.0)
    runner.add("flaky", "exit 3")
    runner.add("slow", "sleep 0.5")
    results = []
    for result in runner.run():
        results.append((result.id, result.cancelled, result.attempts))
        if result.id == "slow":
            runner.cancel("flaky")  # its first attempt failed; the retry waits 1 s
            runner.add("after", "true")  # read at once, while the retry still waits
    assert results == [("slow", False, 1), ("after", False, 1), ("flaky", True, 2)]

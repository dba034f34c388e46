"""Protocol 2's streaming input: tasks start as they arrive, and join a run in progress."""

from __future__ import annotations

import importlib.util
import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from leanpool import Result, TaskFileError, TaskRunner
from tests.helpers import PY

SLOW_SOURCE = (
    "import sys, time\nprint('echo a', flush=True)\ntime.sleep({pause})\nprint('echo b')\n"
)


def _cli(*args: str) -> list[str]:
    return [PY, "-m", "leanpool", *args]


def test_cli_starts_the_first_task_before_a_piped_input_ends() -> None:
    """(echo 'echo a'; sleep 3; echo 'echo b') | leanpool run --lines -"""
    source = subprocess.Popen([PY, "-c", SLOW_SOURCE.format(pause=3)], stdout=subprocess.PIPE)
    began = time.monotonic()
    cli = subprocess.Popen(_cli("run", "--lines", "-"), stdin=source.stdout, stdout=subprocess.PIPE)
    assert source.stdout is not None
    source.stdout.close()
    assert cli.stdout is not None
    first = json.loads(cli.stdout.readline())
    first_after = time.monotonic() - began
    rest = cli.stdout.read()
    cli.stdout.close()
    assert cli.wait(timeout=30) == 0
    source.wait(timeout=5)
    assert (first["id"], first["stdout"]) == (1, "a\n")
    # 0.18-1.12 s loaded (the CLI's start); waiting for EOF gives 3.2 s, never under 3 (the
    # source's sleep): 2 s is 1.8x the one and 1.5x under the other.
    assert first_after < 2.0, f"first result after {first_after:.2f} s: it waited for EOF"
    print(f"\nfirst result {first_after * 1000:.0f} ms after the pipe opened")
    assert [json.loads(line)["stdout"] for line in rest.splitlines()] == ["b\n"]


def test_a_fifo_is_streamed_too(tmp_path: Path) -> None:
    fifo = tmp_path / "tasks.fifo"
    os.mkfifo(fifo)
    cli = subprocess.Popen(_cli("run", str(fifo)), stdout=subprocess.PIPE)
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(b'{"id": "x", "cmd": "echo x"}\n')
        assert cli.stdout is not None
        first = json.loads(cli.stdout.readline())  # arrives while the writer is open
        writer.write(b'{"id": "y", "cmd": "echo y"}')  # no newline at the end
    rest = cli.stdout.read()
    cli.stdout.close()
    assert cli.wait(timeout=30) == 0
    assert first["id"] == "x"
    assert [json.loads(line)["id"] for line in rest.splitlines()] == ["y"]


def test_a_bad_streamed_line_lets_running_tasks_finish_then_fails_naming_it(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "after"
    lines = (
        b'{"id": 1, "cmd": "sleep 0.3; echo slow"}\n'
        b'{"id": 2, "cmd": "echo fast"}\n'
        b"not json\n" + f'{{"id": 4, "cmd": "touch {marker}"}}\n'.encode()
    )
    proc = subprocess.run(_cli("run", "-", "-j", "4"), input=lines, capture_output=True, timeout=30)
    assert proc.returncode == 2
    results = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert sorted(results) == [1, 2]  # the tasks before the bad line ran to their end
    assert results[1]["stdout"] == "slow\n"
    assert not marker.exists()  # nothing after it started
    err = proc.stderr.decode()
    assert err.splitlines()[-1].startswith(
        "leanpool: error: invalid task on line 3: not valid JSON"
    )
    assert "Traceback" not in err


def test_a_regular_file_is_validated_whole_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(f'{{"id": 1, "cmd": "touch {marker}"}}\n{{"id": 2}}\n')
    proc = subprocess.run(_cli("run", str(tasks)), capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert not marker.exists()
    assert proc.stderr.decode() == (
        "leanpool: error: invalid task on line 2: missing 'cmd' or 'call': what to run\n"
    )


def test_a_crawler_adds_the_work_each_result_tells_it_about() -> None:
    runner = TaskRunner(4)
    runner.add(0, "echo 1 2")  # each page links to two more, to depth 3
    seen = []
    for result in runner.run():
        seen.append(result.id)
        depth = len(str(result.id).split("."))
        if depth < 4:
            for link in result.stdout.split():
                child = f"{result.id}.{link}"
                runner.add(child, "echo 1 2")
    assert len(seen) == 1 + 2 + 4 + 8
    assert len(set(seen)) == len(seen)
    assert runner.summary is not None
    assert (runner.summary.total, runner.summary.completed) == (15, 15)


def test_run_and_wait_callback_may_add_tasks_and_sees_the_growing_total() -> None:
    runner = TaskRunner(2)
    runner.add("seed", "echo seed")
    calls: list[tuple[object, int, int]] = []

    def callback(result: Result, completed: int, total: int) -> None:
        calls.append((result.id, completed, total))
        if result.id == "seed":
            runner.add("more", "echo more")

    summary = runner.run_and_wait(callback)
    assert calls == [("seed", 1, 1), ("more", 2, 2)]
    assert summary.completed == 2


def test_ordered_results_with_tasks_added_while_running() -> None:
    runner = TaskRunner(4)
    for i in range(3):
        runner.add(i, f"sleep 0.0{3 - i}; echo {i}")
    ids = []
    for result in runner.run(ordered=True):
        ids.append(result.id)
        if result.id == 0:
            runner.add(3, "echo 3")
            runner.add(4, "sleep 0.05; echo 4")
    assert ids == [0, 1, 2, 3, 4]


def test_adding_from_the_loop_does_not_block_on_the_runner() -> None:
    """The caller spools to a file: thousands of adds in one loop body return at once,
    whatever the runner is doing."""
    runner = TaskRunner(2)
    runner.add("first", "echo first")
    added_in = 0.0
    count = 0
    for result in runner.run():
        count += 1
        if result.id == "first":
            began = time.monotonic()
            for i in range(5000):
                runner.add(i, "true")
            added_in = time.monotonic() - began
    assert count == 5001
    # 0.06-0.17 s loaded (spooled to a file); an add that waited on the runner would wait
    # for it to take each task, from a loop body that is not reading its results.
    assert added_in < 2.0


def test_with_a_journal_a_repeated_id_stops_the_run_naming_both_lines(tmp_path: Path) -> None:
    runner = TaskRunner(2, journal=tmp_path / "journal.jsonl")
    runner.add("a", "echo a")
    runner.add("a", "echo again")
    got: list[Result] = []
    with pytest.raises(TaskFileError, match="line 2: id 'a' was already used on line 1"):
        got.extend(runner.run())
    assert [r.id for r in got] == ["a"]


def _runner_argv(spool: Path, *, stream: bool) -> list[str]:
    """The argv of a lean runner of this spool, started directly (no TaskRunner)."""
    from leanpool._caller.options import make_options
    from leanpool._caller.process import runner_command

    config = {
        "options": make_options(parallel=2),
        "input": {"path": str(spool), "format": "jsonl", "stream": stream},
        "ordered": False,
        "cleanup_dir": None,
        "cluster": None,
        "spill_dir": None,
    }
    return runner_command(config)  # type: ignore[arg-type]


def test_a_runner_given_only_its_input_runs_with_every_default(tmp_path: Path) -> None:
    """A config of one key: every option and config key the caller left out takes its
    default in the runner (a new option is not a protocol change)."""
    from leanpool._caller.process import runner_command

    spool = tmp_path / "spool.jsonl"
    spool.write_bytes(b'{"id": 1, "cmd": "echo 1"}\n')
    config = {"input": {"path": str(spool), "format": "jsonl", "stream": False}}
    with subprocess.Popen(
        runner_command(config),  # type: ignore[arg-type]
        stdin=subprocess.PIPE,  # open until the end: its EOF would stop the run
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        records = [json.loads(line) for line in iter(proc.stdout.readline, b"")]
    assert [r.get("leanpool", "result") for r in records] == ["start", "result", "end"]
    assert records[1]["stdout"] == "1\n"
    assert proc.returncode == 0


def test_a_runner_given_a_config_it_cannot_use_says_so_in_one_record() -> None:
    from leanpool._caller.process import runner_command

    proc = subprocess.run(
        runner_command({"options": {}}),  # type: ignore[typeddict-item]
        input=b"",
        capture_output=True,
        timeout=30,
    )
    (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert (record["leanpool"], record["error"]) == ("fatal", "protocol")
    assert "config cannot be used: the runner's config has no input" in record["message"]
    assert proc.returncode == 1


def test_the_runner_refuses_a_caller_that_breaks_the_control_protocol(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    spool.write_bytes(b"")
    proc = subprocess.run(
        _runner_argv(spool, stream=True),
        input=b'{"leanpool": "more", "offset": 10}\n{"leanpool": "more", "offset": 5}\n',
        capture_output=True,
        timeout=30,
    )
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[0]["leanpool"] == "start"
    assert records[-1]["leanpool"] == "fatal"
    assert records[-1]["error"] == "protocol"
    assert "went back from 10 to 5" in records[-1]["message"]
    assert proc.returncode == 1


def test_the_start_record_says_which_path_the_runner_takes(
    runner_path: str, tmp_path: Path
) -> None:
    """``engine``: the C engine wherever it was built (a failure to load it must not pass
    for the pure-Python fallback); ``python``: our switch is obeyed."""
    spool = tmp_path / "spool.jsonl"
    spool.write_bytes(b'{"id": 1, "cmd": "echo 1"}\n')
    with subprocess.Popen(
        _runner_argv(spool, stream=False),
        stdin=subprocess.PIPE,  # open until the end: its EOF would stop the run
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        lines = [json.loads(line) for line in iter(proc.stdout.readline, b"")]
    built = importlib.util.find_spec("leanpool._runner._engine") is not None
    expected = "c" if runner_path == "engine" and built else "python"
    assert lines[0]["leanpool"] == "start"
    assert lines[0]["engine"] == expected
    assert lines[1]["stdout"] == "1\n"
    assert lines[-1]["leanpool"] == "end"


@pytest.mark.parametrize("bad", ["ls", b"ls"])
def test_run_tasks_refuses_a_single_command_string(bad: object) -> None:
    from leanpool import run_tasks

    with pytest.raises(TypeError, match="commands must be a list of commands, not a single"):
        run_tasks(bad)  # type: ignore[arg-type]


def test_add_says_bytes_are_not_a_command() -> None:
    runner = TaskRunner(2)
    with pytest.raises(TypeError, match="cmd must be a string or a list of strings, not bytes"):
        runner.add(1, b"echo hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cmd as a list must hold strings or bytes only, not int"):
        runner.add(1, ["echo", 1])  # type: ignore[list-item]
    assert len(runner) == 0


def test_stdin_of_the_cli_is_read_as_it_comes_even_when_slow() -> None:
    """A source that writes one line at a time, far apart: each task runs on arrival.

    The source writes each line only once the last one's result came: a CLI that waits
    for more input (or its end) never answers.  (Lines written on a timer cannot tell: a
    CLI that starts 0.6-1 s late on a loaded machine takes them together, as that bug does.)"""
    read_end, write_end = os.pipe()
    cli = subprocess.Popen(_cli("run", "--lines", "-"), stdin=read_end, stdout=subprocess.PIPE)
    os.close(read_end)
    assert cli.stdout is not None
    try:
        for i in range(3):
            os.write(write_end, f"echo {i}\n".encode())
            # The first ~1 s loaded (the CLI's start), the others at once; one that waits for
            # the input's end never comes while it is open: 10 s is only a bound.
            ready, _, _ = select.select([cli.stdout], [], [], 10)
            assert ready, f"no result for line {i + 1} while the input is open"
            assert json.loads(cli.stdout.readline())["stdout"] == f"{i}\n"
    finally:
        os.close(write_end)
    assert cli.stdout.read() == b""
    cli.stdout.close()
    assert cli.wait(timeout=30) == 0


def test_leaving_the_loop_early_is_quick_and_the_runner_exits_by_itself() -> None:
    """Regression: close() waited 1.5 s for a runner blocked on writing results nobody
    read, then killed it."""
    runner = TaskRunner(4)
    for i in range(200):
        runner.add(i, "head -c 50000 /dev/zero | tr '\\0' x")
    for _ in runner.run():
        time.sleep(1.0)  # meanwhile the runner fills the pipe to us, and its backlog
        began = time.monotonic()
        break
    took = time.monotonic() - began
    # 0.02-0.13 s loaded; a runner blocked on its stdout is killed after the caller's 1.5 s
    # wait (1.51 s measured): 0.75 s is 2x under that, 5x over the fix.
    assert took < 0.75, f"leaving the loop took {took:.2f} s"


def test_a_run_never_iterated_does_not_block_the_next() -> None:
    runner = TaskRunner(2)
    runner.add(1, "echo 1")
    runner.run()  # never iterated
    assert [r.stdout for r in runner.run()] == ["1\n"]


def test_cli_reads_a_stdin_left_non_blocking(tmp_path: Path) -> None:
    """Regression: a stdin pipe left O_NONBLOCK by a parent ended the input at its first
    EAGAIN, silently, with exit 0."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    cli = subprocess.Popen(_cli("run", "--lines", "-"), stdin=read_end, stdout=subprocess.PIPE)
    os.close(read_end)
    for i in range(3):
        time.sleep(0.2)
        os.write(write_end, f"echo {i}\n".encode())
    os.close(write_end)
    out, _ = cli.communicate(timeout=30)
    assert cli.returncode == 0
    assert sorted(json.loads(line)["stdout"] for line in out.splitlines()) == [
        "0\n",
        "1\n",
        "2\n",
    ]


def test_a_very_long_task_line_is_read_in_linear_time(tmp_path: Path) -> None:
    """Regression: the spool reader rebuilt a long line at every chunk.

    32 MB takes 0.4-0.9 s loaded; joined again at each 64 KiB chunk, 20 s.  (8 MB is too
    short to tell: 0.7-1.7 s that way, under any limit that the fix passes.)"""
    arg = "x" * (32 << 20)
    runner = TaskRunner(1)
    runner.add("long", ["sh", "-c", 'printf %s "$1" | wc -c', "sh", arg[: 100 << 10]])
    runner.add("env", "true", env={"BIG": arg})
    began = time.monotonic()
    results = {r.id: r for r in runner.run()}
    assert results["long"].stdout.strip() == str(100 << 10)
    assert results["env"].status in (0, 126)  # 32 MB of environment may be too long to exec
    assert time.monotonic() - began < 5  # 5.5x the fix; the quadratic reader is 4x over it


def test_the_runner_warnings_of_a_run_left_early_still_reach_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: leaving the loop closed the runner's stdin, which it read as "the
    caller is gone", and it removed the caller's directory with its own stderr file in
    it.  The caller now says "stop" first."""
    runner = TaskRunner(2, halt=1)
    runner.add("fails", "exit 1")
    runner.add("slow", "sleep 5")
    with caplog.at_level("WARNING", logger="leanpool"):
        for result in runner.run():
            assert result.id == "fails"
            break
    assert "1 task(s) failed: starting no more tasks" in caplog.text


def test_halt_control_starts_nothing_more_and_lets_running_tasks_finish(tmp_path: Path) -> None:
    """``halt`` on the control channel (what the cluster driver sends every batch): the
    running tasks finish and report, none starts after it, and the run says halted."""
    from leanpool._caller.calls import worker_config
    from leanpool._caller.options import make_options
    from leanpool._caller.process import RunnerProcess
    from leanpool._protocol.config import RunnerConfig
    from leanpool._protocol.reader import Ended, ResultEvent

    tasks = tmp_path / "t.jsonl"
    tasks.write_text(
        "".join(json.dumps({"id": i, "cmd": "sleep 0.5; echo done"}) + "\n" for i in range(10))
    )
    config: RunnerConfig = {
        "options": make_options(parallel=2),
        "input": {"path": str(tasks), "format": "jsonl", "stream": False},
        "ordered": False,
        "cleanup_dir": None,
        "halt_rule": None,
        "slot_env": None,
        "workers": worker_config(),
        "cluster": None,
        "spill_dir": None,
    }
    runner = RunnerProcess(config, str(tmp_path))
    try:
        time.sleep(0.2)  # the first two run
        runner.halt()
        events = list(runner.events())
    finally:
        runner.close()
    results = [e.record for e in events if isinstance(e, ResultEvent)]
    assert [r["stdout"] for r in results] == ["done\n", "done\n"]
    end = next(e.record for e in events if isinstance(e, Ended))
    assert end["halted"] is True
    assert end["unfinished"] == 8
    assert end["interrupted"] is False

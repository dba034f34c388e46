"""The public surface: exports, error texts, finality."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import leanpool
from leanpool import RunnerCrashed, TaskFailed, TaskFileError
from leanpool._caller.result import Result


def test_all_is_complete_and_sorted() -> None:
    public = {name for name in dir(leanpool) if not name.startswith("_")}
    assert sorted(leanpool.__all__) == leanpool.__all__
    assert set(leanpool.__all__) == public


def test_public_objects_say_they_live_in_leanpool() -> None:
    for name in leanpool.__all__:
        assert getattr(leanpool, name).__module__ == "leanpool"


def test_error_tree() -> None:
    assert issubclass(leanpool.RunnerCrashed, leanpool.RunnerError)
    assert issubclass(leanpool.ProtocolError, leanpool.RunnerError)
    for name in ("TaskFileError", "RunnerError", "TaskFailed", "JournalError"):
        assert issubclass(getattr(leanpool, name), leanpool.LeanpoolError)


def test_runner_crashed_names_the_signal() -> None:
    error = RunnerCrashed(-signal.SIGKILL, "", completed=3)
    assert (
        str(error)
        == "leanpool runner exited with signal SIGKILL before finishing (3 task(s) had finished)"
    )
    assert (
        RunnerCrashed(1, "boom\nlast words\n")
        .__str__()
        .startswith("leanpool runner exited with status 1 before finishing: last words")
    )


def test_task_file_error_text() -> None:
    assert str(TaskFileError(3, "missing 'cmd'")) == "invalid task on line 3: missing 'cmd'"


def test_result_check() -> None:
    good = Result(id=1, status=0, stdout="", stderr="", ok=True, duration=0.1)
    assert good.check() is good
    bad = Result(id="x", status=-9, stdout="", stderr="", ok=False, duration=0.1, signal="SIGKILL")
    with pytest.raises(TaskFailed, match="task 'x' failed: killed by SIGKILL"):
        bad.check()


def test_result_is_frozen() -> None:
    result = Result(id=1, status=0, stdout="", stderr="", ok=True, duration=0.1)
    with pytest.raises(AttributeError):
        result.status = 1  # type: ignore[misc]


def test_the_cli_says_usage_only_of_what_the_user_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad option is one line and exit 2; a fault of leanpool's own (here a stand-in
    for a bug: a TypeError where the config is built) keeps its traceback, rather than
    passing for the user's mistake."""
    from leanpool import _cli

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": 1, "cmd": "true"}\n')
    assert _cli.main(["run", str(tasks), "-j", "0"]) == 2
    assert capsys.readouterr().err == "leanpool: error: -j/--parallel must be at least 1, not 0\n"

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug of ours")

    monkeypatch.setattr(_cli, "runner_config", broken)
    with pytest.raises(TypeError, match="a bug of ours"):
        _cli.main(["run", str(tasks)])

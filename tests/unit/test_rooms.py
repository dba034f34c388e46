"""The runner's and the caller's rooms on their own: timers, schedule, spool reader,
intake, result records and the one option list."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

import pytest

from leanpool import TaskFileError
from leanpool._caller.options import OPTIONS, KeywordOptions, add_cli_options, make_options
from leanpool._protocol.config import (
    CONFIG_DEFAULTS,
    OPTION_DEFAULTS,
    Options,
    RunnerConfig,
    complete_config,
    default_parallel,
)
from leanpool._protocol.journal import Journal
from leanpool._protocol.records import SPILL_OVER
from leanpool._protocol.spool import SpoolReader, SpoolWriter
from leanpool._protocol.tasks import CommandTask
from leanpool._runner import results
from leanpool._runner.cancels import PendingCancels
from leanpool._runner.children import Child, Outcome
from leanpool._runner.intake import ControlError, Intake
from leanpool._runner.results import result_of, unstarted_result
from leanpool._runner.schedule import BACKOFF_S, Attempt, Schedule
from leanpool._runner.timers import Timers, When
from tests.helpers import load_engine

# -- timers ---------------------------------------------------------------------------------


def test_timers_fire_in_order_of_due_time_then_of_adding() -> None:
    timers: Timers[str] = Timers()
    timers.add(0.05, When.KILL, "late")
    timers.add(0.0, When.TERM, "first")
    timers.add(0.0, When.RETRY, "second")
    assert timers.wait_s() == 0.0
    assert [d.subject for d in timers.due()] == ["first", "second"]
    assert timers.due() == []
    assert 0.0 < timers.wait_s() <= 0.05
    time.sleep(0.06)
    (late,) = timers.due()
    assert (late.what, late.subject) == (When.KILL, "late")
    assert timers.wait_s() == -1


def test_timers_pending_by_kind() -> None:
    timers: Timers[int] = Timers()
    timers.add(5, When.KILL_LEFTOVERS, 2)
    timers.add(1, When.KILL_LEFTOVERS, 1)
    timers.add(3, When.TERM, 9)
    assert [d.subject for d in timers.pending(When.KILL_LEFTOVERS)] == [1, 2]
    assert [d.subject for d in timers.pending(When.TERM)] == [9]
    assert len(timers) == 3


# -- schedule -------------------------------------------------------------------------------


def _task(task_id: int = 1) -> CommandTask:
    return CommandTask(task_id, ["true"], shell=False, line=task_id)


def test_retries_wait_their_delay_then_go_before_new_tasks() -> None:
    timers: Timers[object] = Timers()
    schedule = Schedule(timers, parallel=4, retries=2, retry_delay=0.0)
    assert schedule.retry(_task(), 0, 1)
    assert schedule.pending
    assert not schedule.ready
    (due,) = timers.due()
    assert due.what is When.RETRY
    assert isinstance(due.subject, Attempt)
    schedule.retry_due(due.subject, stopping=False)
    assert [a.number for a in schedule.ready] == [2]
    assert schedule.retry(_task(), 0, 2)  # a second retry is allowed...
    assert not schedule.retry(_task(), 0, 3)  # ...and a third is not: 1 + 2 attempts


def test_a_retry_due_while_stopping_is_dropped() -> None:
    timers: Timers[object] = Timers()
    schedule = Schedule(timers, parallel=4, retries=1, retry_delay=0.0)
    schedule.retry(_task(), 0, 1)
    (due,) = timers.due()
    assert isinstance(due.subject, Attempt)
    schedule.retry_due(due.subject, stopping=True)
    assert not schedule.pending


def test_out_of_resources_lowers_the_limit_then_backs_off_then_gives_up() -> None:
    timers: Timers[object] = Timers()
    schedule = Schedule(timers, parallel=8, retries=0, retry_delay=0.0)
    assert schedule.out_of_resources(running=3) == "now running at most 3 tasks at once"
    assert schedule.parallel == 3
    assert schedule.out_of_resources(running=3) is True  # already there: wait for one
    for _ in BACKOFF_S:  # nothing runs: back off, step by step
        assert schedule.out_of_resources(running=0) is True
    assert [d.what for d in timers.pending(When.WAKE)] == [When.WAKE] * len(BACKOFF_S)
    assert schedule.out_of_resources(running=0) is False
    schedule.started()


# -- the spool ------------------------------------------------------------------------------


def test_spool_reader_never_reads_past_what_was_announced(tmp_path: Path) -> None:
    writer = SpoolWriter(str(tmp_path))
    reader = SpoolReader(writer.path, "jsonl")
    assert reader.next_task() is None
    writer.append({"id": 1, "cmd": "a"})
    writer.append({"id": 2, "cmd": "b"})
    offset = writer.flush()
    with open(writer.path, "ab") as raw:  # half a line, not announced
        raw.write(b'{"id": 3, "cm')
    assert reader.next_task() is None  # nothing announced yet
    reader.announce(offset)
    got = [reader.next_task(), reader.next_task(), reader.next_task()]
    assert [t.id for t in got if t is not None] == [1, 2]
    assert got[2] is None
    assert reader.drained
    assert not reader.ended
    with pytest.raises(ValueError, match="went back"):
        reader.announce(offset - 1)
    reader.close()
    writer.discard()


def test_spool_reader_takes_a_last_line_without_newline_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"echo a\n\necho b")
    reader = SpoolReader(str(path), "lines")
    reader.announce(path.stat().st_size, ended=True)
    tasks = [reader.next_task(), reader.next_task(), reader.next_task()]
    assert [(t.id, t.argv[-1]) for t in tasks if isinstance(t, CommandTask)] == [
        (1, "echo a"),
        (3, "echo b"),
    ]
    assert tasks[2] is None
    assert reader.drained
    assert reader.ended
    reader.close()


def test_spool_reader_names_the_line_of_a_bad_task(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"id": 1, "cmd": "a"}\n\n{"id": 2}\n')
    reader = SpoolReader(str(path), "jsonl")
    reader.announce(path.stat().st_size, ended=True)
    assert reader.next_task() is not None
    with pytest.raises(TaskFileError, match="line 3: missing 'cmd'"):
        reader.next_task()
    reader.close()


# -- intake ---------------------------------------------------------------------------------


def _intake(
    tmp_path: Path, lines: bytes, *, stream: bool, done: set[str | int] | None = None
) -> tuple[Intake, Path]:
    path = tmp_path / "spool.jsonl"
    path.write_bytes(lines)
    journal = None
    if done is not None:  # a journal holding these ids (records without task digests)
        journal_path = tmp_path / "journal.jsonl"
        journal_path.write_text(
            "".join(json.dumps({"id": i, "ok": True}) + "\n" for i in sorted(done, key=str))
        )
        journal = Journal(str(journal_path), resume=True)
        journal.close()
    intake = Intake({"path": str(path), "format": "jsonl", "stream": stream}, journal)
    return intake, path


def test_intake_skips_what_the_journal_holds_and_numbers_the_rest(tmp_path: Path) -> None:
    lines = b"".join(json.dumps({"id": i, "cmd": "true"}).encode() + b"\n" for i in range(5))
    intake, _path = _intake(tmp_path, lines, stream=False, done={1, 3})
    intake.validate()
    assert (intake.tasks, intake.skipped) == (5, 2)
    got = []
    while (item := intake.next_task()) is not None:
        got.append((item[0].id, item[1]))
    assert got == [(0, 0), (2, 1), (4, 2)]
    assert intake.exhausted
    intake.close()


def test_intake_validation_refuses_a_repeated_id_with_a_journal(tmp_path: Path) -> None:
    lines = b'{"id": "a", "cmd": "x"}\n{"id": "a", "cmd": "y"}\n'
    intake, _ = _intake(tmp_path, lines, stream=False, done=set())
    with pytest.raises(TaskFileError, match="line 2: id 'a' was already used on line 1"):
        intake.validate()
    intake.close()


def test_intake_control_records_move_the_end_of_input(tmp_path: Path) -> None:
    line = b'{"id": 1, "cmd": "x"}\n'
    intake, _ = _intake(tmp_path, line, stream=True)
    assert intake.next_task() is None
    assert intake.caught_up
    assert not intake.exhausted
    intake._apply(json.dumps({"leanpool": "more", "offset": len(line)}).encode())
    item = intake.next_task()
    assert item is not None
    assert item[0].id == 1
    before = intake.exhausted
    intake._apply(json.dumps({"leanpool": "end_input", "offset": len(line)}).encode())
    assert (before, intake.exhausted) == (False, True)
    for bad in (b"nonsense", b'{"leanpool": "more"}', b'{"leanpool": "go", "offset": 1}'):
        with pytest.raises(ControlError, match="not a control record"):
            intake._apply(bad)
    intake.close()


# -- results --------------------------------------------------------------------------------


class _Finished(Child):
    def __init__(self, attempt: int = 1, timed_out: bool = False) -> None:
        super().__init__(_task(7), 3, attempt, pid=123)
        self.timed_out = timed_out


@pytest.mark.parametrize("encoder", ["c", "python"])
def test_a_plain_success_has_only_the_fields_every_result_has(
    encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whichever the runner's switch says, both encoders are looked at here.
    encode = None if encoder == "python" else load_engine().encode_result
    monkeypatch.setattr(results, "encode_result", encode)
    built = result_of(_Finished(), Outcome(0, b"out\n", b""), spill_dir=None, digest="ab")
    assert built.ok
    if encoder == "c":  # encoded already, the journal's line with the task's digest
        assert built.record is None
        assert built.line is not None
        assert built.journal_line is not None
        record = json.loads(built.line)
        assert json.loads(built.journal_line) == {**record, "task": "ab"}
    else:
        assert built.record is not None
        assert built.line is None
        record = dict(built.record)
    assert set(record) == {"id", "status", "ok", "duration", "stdout", "stderr"}
    assert (record["id"], record["stdout"]) == (7, "out\n")
    assert built.journal is None


def test_a_failure_says_why_in_its_optional_fields() -> None:
    outcome = Outcome(-15, b"\xff", b"")
    outcome.stdout_truncated = True
    built = result_of(_Finished(attempt=2, timed_out=True), outcome, spill_dir=None)
    record = built.record
    assert record is not None
    assert not built.ok
    assert record.get("timed_out") is True
    assert record.get("signal") == "SIGTERM"
    assert record.get("attempts") == 2
    assert record.get("stdout_truncated") is True
    assert record.get("stdout_b64") == "/w=="
    assert record["stdout"] == "\ufffd"


def test_a_big_output_is_spilled_but_the_journal_keeps_it_inline(tmp_path: Path) -> None:
    big = b"y" * SPILL_OVER
    built = result_of(_Finished(), Outcome(1, big, b"e"), spill_dir=str(tmp_path))
    assert built.record is not None
    spill = built.record.get("stdout_spill")
    assert spill is not None
    assert Path(spill).read_bytes() == big
    assert built.record["stdout"] == ""
    assert built.record["stderr"] == "e"
    assert built.journal is not None
    assert built.journal["stdout"] == big.decode()
    assert "stdout_spill" not in built.journal
    assert built.journal.get("status") == 1
    assert built.journal["ok"] is False
    os.unlink(spill)


def test_an_unstarted_task_result() -> None:
    built = unstarted_result("x", 2, 127, "cannot run 'nope': No such file or directory")
    assert built.record == {
        "id": "x",
        "status": 127,
        "ok": False,
        "duration": 0.0,
        "stdout": "",
        "stderr": "",
        "error": "cannot run 'nope': No such file or directory",
        "attempts": 2,
    }


# -- the one option list --------------------------------------------------------------------


def test_the_option_list_the_wire_type_and_the_api_type_agree() -> None:
    names = [spec.name for spec in OPTIONS]
    assert set(typing.get_type_hints(Options)) == set(names)
    assert list(OPTION_DEFAULTS) == names  # the one table of defaults, in the same order
    assert set(typing.get_type_hints(KeywordOptions)) == set(names) - {"parallel"}
    assert list(make_options(parallel=1)) == names


def test_every_option_is_a_cli_flag_and_in_the_readme() -> None:
    parser = argparse.ArgumentParser()
    add_cli_options(parser)
    dests = {action.dest for action in parser._actions}
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for spec in OPTIONS:
        assert spec.name in dests
        assert f"`{spec.name}" in readme or f"{spec.name}=" in readme, spec.name


def test_make_options_checks_each_option_by_name() -> None:
    options = make_options(parallel=3, timeout=2, journal="j.jsonl")
    assert options["timeout"] == 2.0
    assert isinstance(options["timeout"], float)
    assert options["journal"] == os.path.abspath("j.jsonl")
    assert options["kill_leftovers"] is True
    assert options["kill_grace"] == 2.0
    with pytest.raises(TypeError, match="unexpected option 'timout'"):
        make_options(timout=3)
    with pytest.raises(TypeError, match="kill_leftovers must be True or False, not str"):
        make_options(kill_leftovers="no")
    with pytest.raises(ValueError, match="retries must be at least 0, not -1"):
        make_options(retries=-1)
    with pytest.raises(ValueError, match="kill_grace must be at least 0, not inf"):
        make_options(kill_grace=float("inf"))


def test_a_config_is_completed_from_the_one_table_of_defaults() -> None:
    """What a config leaves out takes its default in the runner, so that an option or
    config key added with a default is no protocol change; what it gives is kept."""
    raw = {"input": {"path": "/x", "format": "jsonl", "stream": True}, "options": {"retries": 3}}
    config = complete_config(raw)
    assert config["options"]["retries"] == 3
    assert config["options"]["parallel"] == default_parallel()
    for name, value in OPTION_DEFAULTS.items():
        if name not in ("parallel", "retries"):
            assert config["options"][name] == value, name  # type: ignore[literal-required]
    for key in set(CONFIG_DEFAULTS) - {"workers"}:
        assert config[key] == CONFIG_DEFAULTS[key], key  # type: ignore[literal-required]
    assert set(config) == set(RunnerConfig.__annotations__)
    assert config["workers"]["path"] == []
    other = complete_config(raw)
    other["options"]["preload"].append("mod")
    assert config["options"]["preload"] == []  # a list default is never shared
    full = make_options(parallel=2, journal="j.jsonl")
    assert complete_config({"input": raw["input"], "options": full})["options"] == full


@pytest.mark.parametrize(
    ("raw", "message"),
    [({}, "no input"), ({"input": {}, "options": []}, "options that are not an object")],
)
def test_a_config_without_input_or_with_bad_options_is_refused(
    raw: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        complete_config(raw)


def test_a_call_whose_arguments_cannot_be_written_is_refused_and_leaves_nothing() -> None:
    """Big arguments go to a file of their own; when the disk refuses it (here a file
    size limit, SIGXFSZ ignored as Python does), add_call raises the documented
    LeanpoolError, leaves no part of the file, and the next add_call still works (the
    failed one's file name once stayed taken: every later add raised FileExistsError)."""
    code = textwrap.dedent(
        """
        import os, resource
        from leanpool import LeanpoolError, TaskRunner
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        runner = TaskRunner(1)
        for i in range(2):
            try:
                runner.add_call(i, len, (b"x" * 150_000,))
            except LeanpoolError as exc:
                print("refused:", exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        runner.add_call("fits", len, (b"x" * 150_000,))
        print(sorted(name.endswith(".pickle") for name in os.listdir(runner._workdir)))
        print([(r.id, r.value) for r in runner.run()])
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.rsplit(": ", 1)[-1] for line in lines[:2]] == ["File too large"] * 2, lines
    assert lines[2:] == ["[False, True]", "[('fits', 150000)]"]


def test_spill_files_are_removed_only_once_their_record_is_known_good(tmp_path: Path) -> None:
    """A record that turns out bad (here its second spill file is missing) removes none
    of the files it named; a good one removes every one, value's included."""
    from leanpool._caller.result import result_from_record

    out = tmp_path / "1.stdout"
    out.write_bytes(b"o" * SPILL_OVER)
    # As the runner writes them: empty inline outputs beside the spill files' names.
    bad: dict[str, object] = {"id": 1, "status": 0, "ok": True, "duration": 0.1}
    bad |= {"stdout": "", "stderr": ""}
    bad |= {"stdout_spill": str(out), "stderr_spill": str(tmp_path / "gone")}
    with pytest.raises(ValueError, match="spilled output cannot be read"):
        result_from_record(bad)  # type: ignore[arg-type]
    assert out.exists()
    value = tmp_path / "1.value"
    value.write_bytes(pickle.dumps(b"v" * SPILL_OVER))
    good: dict[str, object] = {"id": 1, "status": 0, "ok": True, "duration": 0.1}
    good |= {"stdout": "", "stderr": "", "stdout_spill": str(out), "value_spill": str(value)}
    result = result_from_record(good)  # type: ignore[arg-type]
    assert (result.stdout_bytes, result.value) == (b"o" * SPILL_OVER, b"v" * SPILL_OVER)
    assert not out.exists()
    assert not value.exists()


def test_a_cancel_that_can_no_longer_meet_its_task_is_forgotten() -> None:
    """The run's pending cancels stay as few as those that can still matter: once the
    lines before a cancel were read and no retry of its id waits, it is dropped (it
    once waited for its id as long as the run lasted)."""
    retrying: set[str | int] = {"r"}
    cancels = PendingCancels(retrying.__contains__)
    cancels.add("done", before=100, consumed=100)  # its task was read and has finished
    assert not cancels.pending
    cancels.add("r", before=100, consumed=100)  # read, but a retry of it waits
    cancels.add("unread", before=300, consumed=100)
    cancels.add("any", before=None, consumed=100)  # a caller that did not say
    assert not cancels.meets("other", retry=False, consumed=200)
    assert cancels.meets("r", retry=True, consumed=200)
    assert not cancels.meets("other", retry=False, consumed=300)  # "unread" is stale now
    assert cancels.meets("any", retry=False, consumed=10_000)
    assert not cancels.pending

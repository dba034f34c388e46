"""The C engine on its own: starting, draining, reaping, and the result line it encodes.

The whole suite runs the runner on the engine (where it is built) and again on the
pure-Python path (``LEANPOOL_PURE_PYTHON=1``, see ``conftest.py``); these tests look at
the engine's own promises, which the runner builds on: the same bytes as Python's
encoder, the same start as ``posix_spawn``, nothing leaked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from leanpool._protocol.records import decode_output, encode_line
from tests.helpers import load_engine

E = load_engine()


@pytest.fixture
def engine() -> Iterator[Any]:
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    made = E.Engine(
        devnull, dict(os.environb), os.environb.get(b"PATH", b"/bin:/usr/bin"), None, True
    )
    yield made
    made.close()
    os.close(devnull)


def test_the_engine_links_nothing_but_the_c_library() -> None:
    """The runner stays lean: its extension needs libc and the kernel, nothing else."""
    if shutil.which("ldd") is None:
        pytest.fail("ldd (glibc's libc-bin) is missing: cannot read what the engine links")
    assert E.__file__ is not None
    out = subprocess.run(["ldd", E.__file__], capture_output=True, text=True, check=True).stdout
    libraries = {line.split()[0].rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}
    assert libraries <= {
        "linux-vdso.so.1",
        "libc.so.6",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "linux-gate.so.1",
    }, out


def _run(engine: Any, *starts: tuple[object, ...]) -> dict[int, tuple[int, bytes, bytes, int]]:
    pids = [engine.spawn(*start) for start in starts]
    done: dict[int, tuple[int, bytes, bytes, int]] = {}
    deadline = time.monotonic() + 10
    while len(done) < len(pids) and time.monotonic() < deadline:
        assert engine.poll(1.0) == []  # the engine's own events never reach the loop
        for pid, status, out, err, flags in engine.take_finished():
            done[pid] = (status, out, err, flags)
    assert sorted(done) == sorted(pids)
    assert engine.running == 0
    return {pids.index(pid): value for pid, value in done.items()}


def test_commands_run_in_their_own_session_with_only_three_descriptors(engine: Any) -> None:
    script = "import os; print(os.getsid(0) == os.getpid(), sorted(os.listdir('/proc/self/fd')))"
    results = _run(engine, ([sys.executable, "-S", "-c", script],), (["sh", "-c", "echo x >&2"],))
    status, out, err, flags = results[0]
    assert (status, err, flags) == (0, b"", 0)
    assert out.decode().split(" ", 1)[0] == "True"
    # 0, 1, 2, the descriptor the listing itself opened, and whatever this test process
    # inherited without close-on-exec (the runner itself is started with none of those)
    inherited = {fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2 and _inheritable(fd)}
    seen = {int(fd) for fd in json.loads(out.decode().split(" ", 1)[1].replace("'", '"'))}
    assert seen - inherited == {0, 1, 2, 3}
    assert results[1] == (0, b"", b"x\n", 0)


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the listing's own descriptor, closed already
        return False


def test_exit_codes_and_signals(engine: Any) -> None:
    results = _run(engine, (["sh", "-c", "exit 7"],), (["sh", "-c", "kill -9 $$"],))
    assert results[0][0] == 7
    assert results[1][0] == -signal.SIGKILL


def test_start_failures_are_raised_with_their_errno(engine: Any, tmp_path: Path) -> None:
    with pytest.raises(E.ExecError) as missing:
        engine.spawn(["/no/such/program"])
    assert missing.value.errno == 2
    assert missing.value.filename == "/no/such/program"
    with pytest.raises(E.ExecError) as unknown:
        engine.spawn(["no-such-program-anywhere"])
    assert unknown.value.errno == 2
    not_executable = tmp_path / "data"
    not_executable.write_text("echo hi\n")
    with pytest.raises(E.ExecError) as denied:
        engine.spawn([str(not_executable)])
    assert denied.value.errno == 13
    not_executable.chmod(0o755)  # no #! line: posix_spawn refuses it too (no shell fallback)
    with pytest.raises(E.ExecError) as format_error:
        engine.spawn([str(not_executable)])
    assert format_error.value.errno == 8
    with pytest.raises(E.CwdError) as no_cwd:
        engine.spawn(["true"], None, str(tmp_path / "missing"))
    assert no_cwd.value.errno == 2
    assert no_cwd.value.filename == str(tmp_path / "missing")
    with pytest.raises(ValueError, match="embedded null byte"):
        engine.spawn(["tr\0ue"])
    with pytest.raises(ValueError, match="embedded null byte"):
        engine.spawn(["true"], {b"A": b"x\0y"})
    assert engine.running == 0  # nothing was left half started
    assert engine.take_finished() == []


def test_path_search_env_and_cwd(engine: Any, tmp_path: Path) -> None:
    env = dict(os.environb)
    env[b"GREETING"] = b"hello"
    results = _run(
        engine,
        (["printenv", "GREETING"], env),
        (["pwd"], None, str(tmp_path)),
        (["sh", "-c", "echo $GREETING"],),
    )
    assert results[0][1] == b"hello\n"
    assert results[1][1] == f"{tmp_path}\n".encode()
    assert results[2][1] == b"\n"  # the base environment has no GREETING


def test_path_is_searched_in_order_and_eacces_is_remembered(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("#!/bin/sh\necho first\n")  # not executable: EACCES, go on
    (second / "tool").write_text("#!/bin/sh\necho second\n")
    (second / "tool").chmod(0o755)
    (first / "only-here").write_text("#!/bin/sh\necho x\n")
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    engine = E.Engine(devnull, dict(os.environb), f"{first}:{second}".encode(), None, True)
    try:
        assert _run(engine, (["tool"],))[0][1] == b"second\n"
        with pytest.raises(E.ExecError) as denied:
            engine.spawn(["only-here"])
        assert denied.value.errno == 13
    finally:
        engine.close()
        os.close(devnull)


def test_output_of_any_size_is_drained_whole(engine: Any) -> None:
    results = _run(
        engine,
        (["sh", "-c", "head -c 3000000 /dev/urandom | od -An -v | head -c 2500000"],),
        (["sh", "-c", "head -c 700000 /dev/zero >&2"],),
    )
    assert len(results[0][1]) == 2_500_000
    assert results[1][2] == b"\0" * 700_000


def test_max_output_keeps_the_first_bytes_and_says_so() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    engine = E.Engine(devnull, dict(os.environb), b"/bin:/usr/bin", 1000, True)
    try:
        results = _run(engine, (["sh", "-c", "seq 100000; echo e >&2"],))
        _status, out, err, flags = results[0]
        assert out == b"".join(b"%d\n" % i for i in range(1, 100001))[:1000]
        assert err == b"e\n"
        assert flags == E.FLAG_OUT_TRUNCATED
    finally:
        engine.close()
        os.close(devnull)


def test_a_group_that_outlives_its_leader_is_reported(engine: Any) -> None:
    # The leftover holds the pipes: the exit is seen through the pidfd once asked for.
    pid = engine.spawn(["sh", "-c", "sleep 5 & echo started"])
    assert engine.watch_exit(pid)
    done: list[tuple[int, int, bytes, bytes, int]] = []
    # Reported at once (0.002 s measured); unwatched, only once the sleep lets go of the
    # pipes, 5.0 s later: the deadline must stay well under that.
    deadline = time.monotonic() + 2
    while not done and time.monotonic() < deadline:
        engine.poll(0.5)
        done = engine.take_finished()
    ((got, status, out, _err, flags),) = done
    assert (got, status, out) == (pid, 0, b"started\n")
    assert flags & E.FLAG_LEFTOVERS
    os.killpg(pid, signal.SIGKILL)


def test_an_abandoned_command_drops_its_output(engine: Any) -> None:
    pid = engine.spawn(["sh", "-c", "echo early; sleep 5"])
    time.sleep(0.1)
    assert engine.abandon(pid)
    os.killpg(pid, signal.SIGKILL)
    done: list[tuple[int, int, bytes, bytes, int]] = []
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        engine.poll(0.5)
        done = engine.take_finished()
    ((got, status, out, err, flags),) = done
    assert (got, status, out, err) == (pid, -signal.SIGKILL, b"", b"")
    # The group's sleep may still be a zombie for a moment: the loop's Leftovers decide.
    assert flags & ~E.FLAG_LEFTOVERS == 0


def test_handlers_go_back_to_default_and_ignored_signals_stay_ignored() -> None:
    """A command must not start with a handler of the runner's (it would run the
    runner's code, in the runner's memory, until exec), and a signal ignored by
    whoever started the runner stays ignored, as across any exec."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    ignored = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    engine = E.Engine(devnull, dict(os.environb), b"/bin:/usr/bin", None, True)
    try:
        results = _run(engine, (["sh", "-c", "grep -E '^Sig(Ign|Cgt|Blk)' /proc/self/status"],))
        fields = dict(line.split(":\t") for line in results[0][1].decode().splitlines())
        masks = {name: int(value, 16) for name, value in fields.items()}
        bit = 1 << (signal.SIGUSR2 - 1)
        assert masks["SigIgn"] & bit  # stays ignored
        assert not masks["SigIgn"] & (1 << (signal.SIGPIPE - 1))  # Python's ignore is undone
        assert masks["SigBlk"] == 0
    finally:
        engine.close()
        os.close(devnull)
        signal.signal(signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR2, ignored)


def test_the_engine_is_an_epoll_set_for_the_loop(engine: Any) -> None:
    r, w = os.pipe()
    try:
        engine.register(r, 1)  # EPOLLIN
        assert engine.poll(0) == []
        os.write(w, b"x")
        assert engine.poll(1.0) == [(r, 1)]
        engine.modify(r, 4)  # EPOLLOUT: never for a read end
        assert engine.poll(0) == []
        engine.unregister(r)
        with pytest.raises(FileNotFoundError):
            engine.unregister(r)
    finally:
        os.close(r)
        os.close(w)


# -- the result line ---------------------------------------------------------------------


def _python_line(
    task_id: str | int, status: int, duration: float, out: bytes, err: bytes, digest: str | None
) -> bytes:
    record: dict[str, object] = {
        "id": task_id,
        "status": status,
        "ok": status == 0,
        "duration": round(duration, 6),
    }
    record["stdout"], _ = decode_output(out)
    record["stderr"], _ = decode_output(err)
    if digest is not None:
        record["task"] = digest
    return encode_line(record)


ids = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=20))
outputs = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b'"\\\x00\x1f\x7f\n\r\t\x08\x0c', "é€😀\u2028".encode(), b"\xed\xa0\x80"]),
)
durations = st.one_of(
    st.floats(min_value=0, max_value=1e7, allow_nan=False),
    st.sampled_from([0.0, 1e-7, 5e-7, 4.9999995e-7, 0.0000015, 0.0012345, 2.5, 1e-5, 0.1]),
)


@settings(max_examples=600, deadline=None)
@given(
    ids,
    st.integers(min_value=0, max_value=255),
    durations,
    outputs,
    outputs,
    st.none() | st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
)
def test_encode_result_writes_what_encode_line_writes(
    task_id: str | int, status: int, duration: float, out: bytes, err: bytes, digest: str | None
) -> None:
    line = E.encode_result(task_id, status, duration, out, err, digest)
    if line is None:  # Python's path: an output that is not UTF-8, or a lone surrogate
        undecodable = [decode_output(data)[1] is not None for data in (out, err)]
        surrogate = isinstance(task_id, str) and any(0xD800 <= ord(c) < 0xE000 for c in task_id)
        assert any(undecodable) or surrogate
    else:
        assert line == _python_line(task_id, status, duration, out, err, digest)


# -- the plain task line ------------------------------------------------------------------


def _json_reading(line: bytes) -> tuple[object, object] | None:
    """What Python's parser makes of a line with just an id and a cmd; None otherwise."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if type(record) is not dict or set(record) != {"id", "cmd"}:
        return None
    return record["id"], record["cmd"]


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.integers(min_value=-(10**20), max_value=10**20), st.text(max_size=12)),
    st.text(max_size=30),
    st.booleans(),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
    st.sampled_from(["", " ", "\t", "\r"]),
    st.booleans(),
)
def test_parse_plain_reads_what_json_reads(
    task_id: int | str,
    cmd: str,
    ascii_only: bool,
    separators: tuple[str, str],
    pad: str,
    cmd_first: bool,
) -> None:
    record = {"cmd": cmd, "id": task_id} if cmd_first else {"id": task_id, "cmd": cmd}
    text = pad + json.dumps(record, ensure_ascii=ascii_only, separators=separators) + pad
    line = text.encode("utf-8", "surrogatepass")
    found = E.parse_plain(line)
    if found is not None:  # else Python's parser takes the line: anything goes
        assert found == _json_reading(line)
        assert [type(v) for v in found] == [type(task_id), str]


@pytest.mark.parametrize(
    "line",
    [
        b'{"id": 1, "cmd": "echo 1"}',
        b'  {"cmd":"ls","id":"a b"}  ',
        b'{"id": -7, "cmd": "\xc3\xa9cho"}',
        b'{"id": 1, "cmd": "x", "id": 2}',  # given twice: json keeps the last
        b'{"id": 1, "cmd": "x", "env": {}}',
        b'{"id": 1.5, "cmd": "x"}',
        b'{"id": 1e3, "cmd": "x"}',
        b'{"id": 01, "cmd": "x"}',
        b'{"id": true, "cmd": "x"}',
        b'{"id": null, "cmd": "x"}',
        b'{"id": 1, "cmd": ["ls"]}',
        b'{"id": 1, "cmd": "a\\"b"}',
        b'{"id": 1, "cmd": "tab\there"}',
        b'{"id": 1, "cmd": "\xff"}',
        b'{"id": 1, "cmd": "x"} trailing',
        b'{"id": 1, "cmd": "x"',
        b'{"id": 1 "cmd": "x"}',
        b'{"id": 1,, "cmd": "x"}',
        b'{"id": 12345678901234567890123, "cmd": "x"}',
        b'["id", 1]',
        b"",
        b"   ",
    ],
)
def test_parse_plain_reads_what_json_reads_or_leaves_the_line_to_it(line: bytes) -> None:
    found = E.parse_plain(line)
    assert found is None or found == _json_reading(line)


# -- the validation pass of a task file --------------------------------------------------

LINES = st.sampled_from(
    [
        b'{"id": 1, "cmd": "echo 1"}',
        b'{"cmd": "ls -l", "id": "x"}',
        b"",
        b"   \t",
        b'{"id": 2, "cmd": "a\\"b"}',  # valid, but not plain: Python's parser
        b'{"id": 3, "cmd": "sleep 1", "timeout": 2}',
        b'{"id": 4, "cmd": "   "}',  # not valid: an empty command
        b'{"id": 5, "cmd": "\xc2\xa0"}',  # not valid either (isspace), left to Python
        b'{"id": 6, "cmd": "\xff"}',  # not UTF-8
        b'{"id": 7.5, "cmd": "x"}',
        b"not json",
        b'{"id": 8, "cmd": "x"}\r',
        b'{"id": 9, "cmd": "' + b"y" * 70000 + b'"}',  # longer than the C pass's buffer
    ]
)


def _validate(path: Path, with_c: bool) -> tuple[int, int | None]:
    """(tasks, bad line or None) of the validation pass, with or without the C pass."""
    from leanpool import TaskFileError
    from leanpool._runner.intake import Intake
    from leanpool._runner.piped import file_checker, line_parser

    intake = Intake(
        {"path": str(path), "format": "jsonl", "stream": False},
        None,
        check=line_parser("jsonl", check_only=True) if with_c else None,
        check_file=E.check_plain_lines if with_c else None,
    )
    assert file_checker("jsonl") is not None or not with_c
    try:
        intake.validate()
    except TaskFileError as exc:
        return intake.tasks, exc.line
    finally:
        intake.close()
    return intake.tasks, None


@settings(max_examples=150, deadline=None)
@given(st.lists(LINES, max_size=12), st.booleans())
def test_the_c_validation_pass_finds_what_pythons_finds(
    lines: list[bytes], last_newline: bool
) -> None:
    import tempfile

    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        f.write(data)
        f.flush()
        path = Path(f.name)
        python_tasks, python_bad = _validate(path, with_c=False)
        c_tasks, c_bad = _validate(path, with_c=True)
    assert c_bad == python_bad
    if python_bad is None:
        assert c_tasks == python_tasks


def test_the_c_validation_pass_counts_lines_and_stops_where_python_must_look(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        b'{"id": 1, "cmd": "a"}\n\n{"id": 2, "cmd": "b"}\r\nbad\n{"id": 3, "cmd": "c"}'
    )
    with open(path, "rb") as f:
        offset, lines, tasks = E.check_plain_lines(f.fileno(), path.stat().st_size)
    assert (lines, tasks) == (3, 2)
    assert path.read_bytes()[offset:].startswith(b"bad\n")
    path.write_bytes(b'{"id": 1, "cmd": "a"}\n{"id": 2, "cmd": "b"}')  # no last newline
    with open(path, "rb") as f:
        assert E.check_plain_lines(f.fileno(), path.stat().st_size) == (path.stat().st_size, 2, 2)

"""The leanpool command as a real subprocess: JSONL in, JSONL out, exit status, stderr."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from leanpool import TaskRunner
from tests.helpers import PY, leanpool_cli


def records(stdout: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_jsonl_file_all_ok(tmp_path: Path) -> None:
    tasks = write(tmp_path / "t.jsonl", [{"id": i, "cmd": f"echo {i}"} for i in range(20)])
    proc = leanpool_cli("run", str(tasks), "-j", "4")
    assert proc.returncode == 0
    assert proc.stderr == b""
    out = records(proc.stdout)
    assert sorted(r["id"] for r in out) == list(range(20))  # type: ignore[type-var]
    assert all(r["ok"] and r["stdout"] == f"{r['id']}\n" for r in out)
    assert set(out[0]) >= {"id", "status", "ok", "duration", "stdout", "stderr"}


def test_stdin_dash_and_ordered(tmp_path: Path) -> None:
    lines = "".join(
        json.dumps({"id": i, "cmd": f"sleep 0.0{5 - i}; echo {i}"}) + "\n" for i in range(5)
    )
    proc = leanpool_cli("run", "-", "--ordered", "-j", "5", stdin=lines.encode())
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in records(proc.stdout)] == list(range(5))


def test_console_script_and_lines_mode(tmp_path: Path) -> None:
    script = shutil.which("leanpool", path=os.path.dirname(sys.executable))
    assert script is not None
    commands = tmp_path / "commands.txt"
    commands.write_text("echo one\n\necho two | tr a-z A-Z\nexit 4\n")
    proc = subprocess.run(
        [script, "run", "--lines", str(commands)], capture_output=True, timeout=60
    )
    assert proc.returncode == 1  # line 4 failed
    by_id = {r["id"]: r for r in records(proc.stdout)}
    assert set(by_id) == {1, 3, 4}
    assert by_id[3]["stdout"] == "TWO\n"
    assert by_id[4]["status"] == 4
    assert by_id[4]["ok"] is False
    assert proc.stderr == b""


def test_any_failure_gives_status_1(tmp_path: Path) -> None:
    tasks = write(tmp_path / "t.jsonl", [{"id": "a", "cmd": "true"}, {"id": "b", "cmd": "false"}])
    proc = leanpool_cli("run", str(tasks))
    assert proc.returncode == 1
    assert len(records(proc.stdout)) == 2


@pytest.mark.parametrize(
    ("args", "content", "message"),
    [
        (["run", "{missing}"], None, "cannot read {missing}: No such file or directory"),
        (["run", "{dir}"], None, "Is a directory"),
        (
            ["run", "{file}"],
            b'{"id": 1, "cmd": "true"}\n{"id": 2\n',
            "invalid task on line 2: not valid JSON",
        ),
        (
            ["run", "{file}"],
            b'{"id": 1, "cmd": "true"}\n\xff\n',
            "invalid task on line 2: not valid UTF-8",
        ),
        (["run", "{file}"], b'{"id": 1}\n', "invalid task on line 1: missing 'cmd'"),
        (["run", "{file}", "-j", "0"], b"", "-j/--parallel must be at least 1, not 0"),
        (["run", "{file}", "-j", "x"], b"", "not an integer: 'x'"),
        (["run", "{file}", "--timeout", "soon"], b"", "not a number of seconds"),
        (["run", "{file}", "--resume"], b"", "--resume needs a journal to resume from"),
        (["run"], None, "the following arguments are required: FILE"),
        (["walk"], None, "invalid choice: 'walk'"),
        ([], None, "the following arguments are required: command"),
    ],
)
def test_bad_usage_and_input_exit_2_with_one_clear_line(
    tmp_path: Path, args: list[str], content: bytes | None, message: str
) -> None:
    file = tmp_path / "tasks.jsonl"
    marker = tmp_path / "ran"
    file.write_bytes((content or b"").replace(b"true", f"touch {marker}".encode()))
    paths = {"missing": str(tmp_path / "nope.jsonl"), "dir": str(tmp_path), "file": str(file)}
    argv = [a.format(**paths) for a in args]
    proc = leanpool_cli(*argv)
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert err.startswith("leanpool: error: ")
    assert message.format(**paths) in err
    assert not marker.exists(), "nothing may run when the task file is invalid"


def test_help_exits_0() -> None:
    proc = leanpool_cli("run", "--help")
    assert proc.returncode == 0
    assert b"--parallel" in proc.stdout


def test_progress_bar_on_a_terminal_and_nothing_extra_on_stdout(tmp_path: Path) -> None:
    tasks = write(tmp_path / "t.jsonl", [{"id": i, "cmd": "true"} for i in range(30)])
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.run(
            [PY, "-m", "leanpool", "run", str(tasks)],
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert b"30/30" in seen
    assert b"task/s" in seen
    assert len(records(proc.stdout)) == 30


def test_results_stream_before_the_run_ends(tmp_path: Path) -> None:
    tasks = write(
        tmp_path / "t.jsonl", [{"id": "fast", "cmd": "true"}, {"id": "slow", "cmd": "sleep 3"}]
    )
    proc = subprocess.Popen([PY, "-m", "leanpool", "run", str(tasks)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["id"] == "fast"
        assert proc.poll() is None, "the first result must arrive while the slow task still runs"
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_closed_stdout_stops_quietly(tmp_path: Path) -> None:
    tasks = write(tmp_path / "t.jsonl", [{"id": i, "cmd": f"echo {i}"} for i in range(2000)])
    proc = subprocess.run(
        f"{PY} -m leanpool run {tasks} | head -n 1", shell=True, capture_output=True, timeout=60
    )
    assert len(proc.stdout.splitlines()) == 1
    assert b"Traceback" not in proc.stderr


def test_a_pipe_is_spooled_since_the_runner_reads_its_file_twice(tmp_path: Path) -> None:
    fifo = tmp_path / "tasks.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [PY, "-m", "leanpool", "run", "--lines", str(fifo)], stdout=subprocess.PIPE
    )
    try:
        with fifo.open("w") as writer:  # blocks until the CLI opens it
            writer.write("echo a\necho b\n")
    finally:
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert sorted(r["stdout"] for r in records(out)) == ["a\n", "b\n"]  # type: ignore[type-var]


# -- what a new shell user hit ---------------------------------------------------------


def test_version() -> None:
    proc = leanpool_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("leanpool ")


def test_output_dir_is_made_and_no_two_tasks_share_a_file(tmp_path: Path) -> None:
    out = tmp_path / "made" / "here"
    tasks = tmp_path / "t.jsonl"
    lines = [
        {"id": 1, "cmd": "echo int"},
        {"id": "1", "cmd": "echo str"},
        {"id": "x", "cmd": "echo first"},
        {"id": "x", "cmd": "echo second"},
    ]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = leanpool_cli("run", str(tasks), "--output-dir", str(out), "-j", "1")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    files = [r["stdout_file"] for r in records]
    assert len(set(files)) == 4
    contents = sorted(Path(f).read_text() for f in files)
    assert contents == ["first\n", "int\n", "second\n", "str\n"]


def test_lines_that_are_not_utf8_reach_the_command_exactly(tmp_path: Path) -> None:
    target = tmp_path / "out"
    commands = tmp_path / "commands.txt"
    commands.write_bytes(b"printf '%s' '\xff\xfecaf\xe9' > " + str(target).encode() + b"\n")
    proc = leanpool_cli("run", "--lines", str(commands))
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == b"\xff\xfecaf\xe9"


def test_the_library_takes_bytes_in_an_argv() -> None:
    runner = TaskRunner(1)
    runner.add(1, ["printf", "%s", b"\xff\x00x"[:1] + b"name"])
    (result,) = runner.run()
    assert result.stdout_bytes == b"\xffname"


def test_a_big_output_is_streamed_not_held(tmp_path: Path) -> None:
    """Regression: one task writing 50 MB of random bytes made ``leanpool run`` peak at
    1.29 GB (a 185 MB JSON line).  Its output now comes as a spill file, streamed into
    the printed line: the CLI's own peak stays under 3 x the output."""
    size = 20 << 20
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"id": 1, "cmd": f"head -c {size} /dev/urandom"}) + "\n")
    # VmHWM, not ru_maxrss: Linux carries the peak of the process that started us
    # across exec into ru_maxrss (here, the test process's own), but not into VmHWM.
    probe = (
        "import sys\n"
        "from leanpool._cli import main\n"
        "status = main(sys.argv[1:])\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(hwm.split()[1], file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    proc = subprocess.run([PY, "-c", probe, "run", str(tasks)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    peak_kib = int(proc.stderr.split()[-1])
    (record,) = records(proc.stdout)
    exact = base64.b64decode(record["stdout_b64"])  # type: ignore[arg-type]
    assert len(exact) == size
    print(f"CLI peak RSS {peak_kib / 1024:.0f} MiB for a {size >> 20} MiB output")
    assert peak_kib * 1024 < 3 * size

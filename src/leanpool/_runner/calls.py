"""The call kind of child: a Python call run by a warm worker process the runner owns.

A worker (``Worker``) is a Python process with the caller's interpreter and ``sys.path``,
started by the runner through ``posix_spawn`` (never a fork of the caller, nor of the
runner), that runs calls one at a time (``leanpool._worker``; the wire is
``leanpool._protocol.calls``).  It outlives the attempts it runs, so it, not the
attempt, owns its descriptors: its reply pipe, stdout and stderr pipes and pidfd are
watched for its whole life and routed to ``Worker.on_event``, which hands what it reads
to the attempt it runs (a ``CallChild``), if any.

A worker's life::

    STARTING ──ready──► IDLE ◄──reply──► BUSY
        │                 │                 │
        └──── exits ──────┴──── exits ──────┴──► GONE (reaped; a BUSY one fails its call)

- A call given to a STARTING worker waits: its timeout starts once the worker is ready
  (``Child.running``, ``Host.began``), so a slow ``preload`` is not charged to calls.
- A worker that exits before it is ready, unless we killed it, cannot work at all (a
  ``preload`` that fails): the run ends with one error (``Host.worker_failed``), rather
  than starting worker after worker.
- A timeout, a cancel or a stop signals the worker's whole process group, so whatever
  the call started dies with it; the worker is replaced by the next call that needs one.
- A worker is retired (SIGKILL, reaped when it goes) after ``max_tasks_per_worker``
  calls, or a call after which its RSS is over ``max_worker_memory``.

The runner stays lean: it forwards the base64 ``pickle`` payloads as they are and reads
the workers' replies as JSON; it never unpickles anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import time
from typing import TYPE_CHECKING, Final

from .._protocol.calls import CALL_FD, REPLY_FD
from .._protocol.records import encode_line
from .children import CapturingChild
from .reaping import group_alive, open_pidfd, signal_group, try_reap
from .results import signal_name
from .spawn import ProcessSpec, devnull, start_process

if TYPE_CHECKING:
    from .._protocol.calls import CallRequest, WorkerConfig
    from .._protocol.tasks import CallTask, Task
    from .children import Host, Outcome

__all__ = ["WORKER_BOOTSTRAP", "CallChild", "Worker", "WorkerPool", "start_call"]

WORKER_BOOTSTRAP: Final = (
    # As the runner's bootstrap: import leanpool._worker without leanpool/__init__, then
    # drop the bare package, so that a call that imports leanpool gets the real one.
    "import sys;p=type(sys)('leanpool');p.__path__=[sys.argv[1]];sys.modules['leanpool']=p;"
    "from leanpool._worker import main;del sys.modules['leanpool'];"
    "sys.exit(main(sys.argv[2:]))"
)

_READ: Final = 1 << 16
_BOOT_LOG: Final = 4000
"""Bytes of a starting worker's stderr kept, for the error if it cannot start."""

EPOLLIN: Final = select.EPOLLIN
EPOLLOUT: Final = select.EPOLLOUT


def start_call(task: Task, seq: int, attempt: int, host: Host) -> CallChild:
    """Give one attempt of a call task to an idle worker, or to a new one.

    Raises:
        SpawnError: no worker can be started (the interpreter is missing, ...).
        OSError: out of descriptors or processes for now.
    """
    call: CallTask = task  # type: ignore[assignment]  # CHILD_KINDS maps by class
    worker = host.worker_pool().take()
    request: CallRequest = {"call": call.function}
    if call.payload is not None:
        request["pickle"] = call.payload
    elif call.payload_file is not None:
        request["pickle_file"] = call.payload_file
    else:
        if call.args is not None:
            request["args"] = call.args
        if call.kwargs is not None:
            request["kwargs"] = call.kwargs
    if host.spill_dir is not None:
        request["spill"] = os.path.join(host.spill_dir, f"{seq}.{attempt}.value")
    child = CallChild(task, seq, attempt, worker, host)
    worker.assign(child, encode_line(request))
    return child


class CallChild(CapturingChild):
    """One attempt of a call task, run by ``worker``; its pid is the worker's.

    Done when the worker replied (status 0, or 1 for an exception), or when the worker
    died running it (its exit status, minus the signal number for a signal).
    """

    __slots__ = ("fields", "status", "worker")

    def __init__(self, task: Task, seq: int, attempt: int, worker: Worker, host: Host) -> None:
        super().__init__(task, seq, attempt, worker.pid, host)
        self.worker = worker
        self.running = worker.ready
        self.status: int | None = None
        self.fields: dict[str, object] | None = None

    def on_event(self, fd: int, events: int) -> None:  # pragma: no cover  # the worker owns fds
        raise AssertionError("a call's descriptors belong to its worker")

    def on_exit(self, status: int) -> None:
        self.worker.exited(status)

    @property
    def exit_watched(self) -> bool:
        return True  # the worker's exit is watched for its whole life

    def watch_exit(self) -> None:
        pass

    def signal(self, sig: int) -> None:
        """Signal the worker's group: the worker and everything the call started."""
        self.worker.killed = True
        signal_group(self.worker.pid, sig)

    def replied(self, reply: dict[str, object]) -> None:
        fields = dict(reply)
        fields.pop("ok", None)
        fields.pop("rss", None)
        self.fields = fields or None
        self.status = 0 if reply.get("ok") else 1
        self.done = True

    def worker_died(self, status: int) -> None:
        self.status = status
        if not self.timed_out and not self.cancelled and not self.abandoned:
            how = f"signal {signal_name(-status)}" if status < 0 else f"exit status {status}"
            if self.worker.bad_reply:
                how = "killed: it wrote something that is not a reply on its reply pipe"
            self.fields = {
                "error": {
                    "type": "WorkerCrashed",
                    "message": f"the worker running this call died ({how})",
                    "traceback": "",
                }
            }
        self.done = True

    def outcome(self) -> Outcome:
        assert self.status is not None
        result = self.captured(self.status)
        result.fields = self.fields
        return result


class Worker:
    """One warm worker process; see the module docstring for its life.

    Invariants: a descriptor field is -1 once closed; ``child`` is the call it runs (or
    will run once ready), None when it has none; it is in its pool's ``idle`` list
    exactly while ready, without a call, and neither retired nor gone.
    """

    __slots__ = (
        "bad_reply",
        "boot_log",
        "call_fd",
        "calls",
        "child",
        "err_fd",
        "exit_fd",
        "gone",
        "killed",
        "out_fd",
        "pending",
        "pid",
        "pool",
        "ready",
        "replies",
        "reply_fd",
        "retired",
    )

    done = False  # as the owner of descriptors: only a Child is ever done

    def __init__(self, pool: WorkerPool, pid: int, fds: tuple[int, int, int, int]) -> None:
        self.pool = pool
        self.pid = pid
        self.call_fd, self.reply_fd, self.out_fd, self.err_fd = fds
        self.exit_fd = -1
        self.ready = False
        self.retired = False
        self.gone = False
        self.killed = False
        self.bad_reply = False
        self.child: CallChild | None = None
        self.pending: memoryview | None = None
        self.replies = bytearray()
        self.boot_log = bytearray()
        self.calls = 0

    # -- giving it work --------------------------------------------------------------------

    def assign(self, child: CallChild, request: bytes) -> None:
        self.child = child
        self.pending = memoryview(request)
        self._write()

    def _write(self) -> None:
        view = self.pending
        assert view is not None
        host = self.pool.host
        registered = self.call_fd in host.watched
        try:
            while view:
                view = view[os.write(self.call_fd, view) :]
        except BlockingIOError:
            self.pending = view
            if not registered:
                host.watch(self.call_fd, EPOLLOUT, self)
            return
        except BrokenPipeError:  # it is exiting: its exit will fail the call
            pass
        self.pending = None
        if registered:
            host.unwatch(self.call_fd)

    # -- events ----------------------------------------------------------------------------

    def on_event(self, fd: int, events: int) -> None:
        if fd == self.reply_fd:
            self._read_replies()
        elif fd == self.exit_fd:
            status = try_reap(self.pid)
            if status is not None:
                self.exited(status)
        elif fd == self.call_fd:
            if self.pending is not None:
                self._write()
        else:
            self._read_output(fd)

    def _read_replies(self) -> bool:
        """Read what the reply pipe holds and act on each whole line; False at EOF or
        when it holds nothing now."""
        try:
            data = os.read(self.reply_fd, _READ)
        except BlockingIOError:
            return False
        if not data:
            self._close("reply_fd")
            return False
        if self.bad_reply:
            return True  # read and dropped: nothing it writes is trusted; its exit is coming
        replies = self.replies
        start = len(replies)
        replies += data
        while not self.gone:
            end = replies.find(b"\n", start)
            if end < 0:
                break
            line = bytes(replies[: end + 1])
            del replies[: end + 1]
            start = 0
            try:
                reply = self.pool.decode(line)
            except ValueError:
                # Not a reply: the call wrote on the worker's reply descriptor.  The worker
                # cannot be trusted; its death fails the call it ran, and the run goes on.
                replies.clear()
                self.bad_reply = True
                self.retire()
                break
            self._on_reply(reply)
        return True

    def _on_reply(self, reply: dict[str, object]) -> None:
        host = self.pool.host
        child = self.child
        if not self.ready:
            if "fatal" in reply:
                host.worker_failed(str(reply["fatal"]))
                return
            self.ready = True
            if child is None:
                self.pool.idle.append(self)
            else:
                child.running = True
                child.started = time.monotonic()
                host.began(child)
            return
        if child is None:
            return  # a reply to nothing: ignore it rather than break the run
        for fd in (self.out_fd, self.err_fd):  # the call's output is in the pipes by now
            if fd >= 0:
                self._drain(fd)
        self.child = None
        self.calls += 1
        child.replied(reply)
        # A worker we signalled (a timeout or cancel that came as the call ended) is
        # dying: never give it another call.
        if self.killed or self.pool.retire_after(self, reply):
            self.retire()
        else:
            self.pool.idle.append(self)
        host.attempt_over(child)

    def _read_output(self, fd: int) -> None:
        if not self.ready and self.reply_fd >= 0:
            # The worker writes its ready line before it reads a call, so output that
            # follows it is the call's: act on that line first (epoll may list the
            # output pipe before the reply pipe in one batch).
            self._read_replies()
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        if not data:
            self._close("out_fd" if fd == self.out_fd else "err_fd")
            return
        self._keep(fd, data)

    def _keep(self, fd: int, data: bytes) -> None:
        child = self.child
        if child is not None and child.running:
            if not child.abandoned:
                child.keep(fd == self.out_fd, data)
        elif not self.ready and len(self.boot_log) < _BOOT_LOG:
            self.boot_log += data[: _BOOT_LOG - len(self.boot_log)]
        # Otherwise it is what an idle worker printed (a thread an earlier call left
        # running): no call's output, dropped.

    def _drain(self, fd: int) -> None:
        """Read what fd holds now, without waiting."""
        try:
            while True:
                data = os.read(fd, _READ)
                if not data:
                    self._close("out_fd" if fd == self.out_fd else "err_fd")
                    return
                self._keep(fd, data)
        except BlockingIOError:
            return

    def _close(self, name: str) -> None:
        fd: int = getattr(self, name)
        if fd >= 0:
            host = self.pool.host
            if fd in host.watched:
                host.forget(fd)
            else:
                os.close(fd)
            setattr(self, name, -1)

    # -- its end ---------------------------------------------------------------------------

    def exited(self, status: int) -> None:
        """The worker process is reaped: fail the call it ran, let go of everything."""
        if self.gone:
            return
        while self.reply_fd >= 0 and not self.bad_reply and self._read_replies():
            pass  # a reply written as it died counts; none from a worker that broke the wire
        for fd in (self.out_fd, self.err_fd):
            if fd >= 0:
                self._drain(fd)
        self.release()
        host = self.pool.host
        child = self.child
        self.child = None
        if not self.ready and not self.killed:
            log = self.boot_log.decode("utf-8", "replace").strip()
            how = f"signal {signal_name(-status)}" if status < 0 else f"status {status}"
            message = f"a worker exited with {how} before it was ready"
            host.worker_failed(f"{message}: {log}" if log else message)
            if child is not None:
                child.abandoned = True  # no result: a resumed run runs it again
        if group_alive(self.pid):
            if child is not None:
                host.leftovers_found(child)
            else:
                signal_group(self.pid, signal.SIGKILL)
        if child is not None:
            child.worker_died(status)
            host.attempt_over(child)

    def release(self) -> None:
        """It is reaped: close every descriptor, leave the pool."""
        self.gone = True
        for name in ("call_fd", "reply_fd", "out_fd", "err_fd", "exit_fd"):
            self._close(name)
        self.pool.forget(self)

    def retire(self) -> None:
        """Done with it: SIGKILL its group; it is reaped when it goes."""
        self.retired = self.killed = True
        signal_group(self.pid, signal.SIGKILL)

    def __repr__(self) -> str:
        state = (
            "gone" if self.gone else "busy" if self.child else "idle" if self.ready else "starting"
        )
        return f"<Worker pid {self.pid} {state}, {self.calls} call(s)>"


class WorkerPool:
    """The run's workers: started as calls need them, at most one per running call.

    Invariant: every worker not gone is in ``workers`` (by pid); ``idle`` holds those that wait
    for a call.  A worker is started only when none is idle, and a call holds a slot of
    ``parallel``, so there are never more workers than ``parallel`` (plus retired ones
    not yet reaped).
    """

    def __init__(
        self,
        host: Host,
        config: WorkerConfig,
        *,
        max_calls: int | None,
        max_memory: int | None,
    ) -> None:
        self.host = host
        self.config = config
        self.max_calls = max_calls
        self.max_memory = max_memory
        self.workers: dict[int, Worker] = {}
        self.idle: list[Worker] = []
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._argv = [config["executable"], "-c", WORKER_BOOTSTRAP, package_dir]
        self._config_json = json.dumps(config)

    def decode(self, line: bytes) -> dict[str, object]:
        """One reply line of a worker."""
        record = json.loads(line)
        if type(record) is not dict:
            raise ValueError(f"a worker wrote {line[:200]!r}")
        return record

    def take(self) -> Worker:
        """An idle worker, or a new one."""
        idle = self.idle
        while idle:
            worker = idle.pop()
            if not (worker.gone or worker.retired or worker.killed):
                return worker
        return self._start()

    def _start(self) -> Worker:
        host = self.host
        fds: list[int] = []
        theirs: list[int] = []
        try:
            for _ in range(4):
                r, w = os.pipe()
                fds += (r, w)
            call_r, call_w, reply_r, reply_w, out_r, out_w, err_r, err_w = (
                _above_targets(fd) for fd in fds
            )
            fds = [call_r, call_w, reply_r, reply_w, out_r, out_w, err_r, err_w]
            theirs = [call_r, reply_w, out_w, err_w]
            spec = ProcessSpec(
                [*self._argv, self._config_json],
                host.base_env,
                [(devnull(), 0), (out_w, 1), (err_w, 2), (call_r, CALL_FD), (reply_w, REPLY_FD)],
            )
            pid = start_process(spec, host.home_fd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in theirs:
            os.close(fd)
        ours = (call_w, reply_r, out_r, err_r)
        exit_fd = -1
        if host.pidfds:
            try:
                exit_fd = open_pidfd(pid)
            except OSError:  # out of descriptors: a worker we could not watch is no use
                signal_group(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                for fd in ours:
                    os.close(fd)
                raise
        for fd in ours:
            os.set_blocking(fd, False)
        worker = Worker(self, pid, ours)
        worker.exit_fd = exit_fd
        self.workers[pid] = worker
        host.watch(reply_r, EPOLLIN, worker)
        host.watch(out_r, EPOLLIN, worker)
        host.watch(err_r, EPOLLIN, worker)
        if exit_fd >= 0:
            host.watch(exit_fd, EPOLLIN, worker)
        return worker

    def retire_after(self, worker: Worker, reply: dict[str, object]) -> bool:
        if self.max_calls is not None and worker.calls >= self.max_calls:
            return True
        rss = reply.get("rss")
        return self.max_memory is not None and isinstance(rss, int) and rss > self.max_memory

    def forget(self, worker: Worker) -> None:
        self.workers.pop(worker.pid, None)
        if worker in self.idle:
            self.idle.remove(worker)

    def on_exit(self, pid: int, status: int) -> None:
        """SIGCHLD path: pid, reaped by the loop, may be a worker running no call."""
        worker = self.workers.get(pid)
        if worker is not None:
            worker.exited(status)

    def kill_all(self) -> None:
        """The run is over: SIGKILL every worker's group (with anything a call left in
        it); the loop reaps them and calls ``reaped``."""
        for worker in self.workers.values():
            worker.killed = True
            signal_group(worker.pid, signal.SIGKILL)

    def reaped(self, pid: int) -> None:
        """On the way out: pid is reaped; if it was a worker, close what it held."""
        worker = self.workers.get(pid)
        if worker is not None:
            worker.child = None
            worker.release()


def _above_targets(fd: int) -> int:
    """fd, moved above the numbers a worker's descriptors get (0-4), so that one dup2
    in the child cannot overwrite the source of another."""
    if fd > REPLY_FD:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, REPLY_FD + 1)
    os.close(fd)
    return moved

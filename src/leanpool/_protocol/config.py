"""The runner's configuration: the one JSON argument a caller starts it with.

``Options`` is the wire shape of a run's options; ``leanpool._caller.options`` holds their
defaults, checks and help (one spec per option) and the type of ``TaskRunner``'s keyword
arguments, and a test keeps the three in step.  Standard library only: the
lean runner imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypedDict

if TYPE_CHECKING:
    from .calls import WorkerConfig

__all__ = ["ClusterConfig", "HaltRule", "InputConfig", "Options", "RunnerConfig", "TaskFormat"]

TaskFormat = Literal["jsonl", "lines"]
"""``jsonl``: one task record per line; ``lines``: one shell command per line, whose id
is its line number."""


class Options(TypedDict):
    """How to run: every key is documented in the README's option table.

    A caller always sends every key: ``make_options`` fills the defaults.
    """

    parallel: int
    timeout: float | None
    kill_grace: float
    kill_leftovers: bool
    max_output: int | None
    output_dir: str | None
    retries: int
    retry_delay: float
    halt: int | None
    halt_now: bool
    journal: str | None
    resume: bool
    resume_failed: bool
    preload: list[str]
    max_tasks_per_worker: int | None
    max_worker_memory: int | None


class InputConfig(TypedDict):
    """Where the tasks come from.

    ``stream`` false: ``path`` is a whole task file; the runner validates all of it before
    it starts a task, and input ends at the end of the file.  ``stream`` true: the file
    grows while the run goes on; the runner reads only as far as the caller's latest
    ``more`` record, and input ends with ``end_input``.
    """

    path: str
    format: TaskFormat
    stream: bool


class HaltRule(TypedDict):
    """GNU parallel's ``--halt now|soon,fail|success=N|N%`` (``leanpool parallel``): halt
    once ``count`` results (or ``percent`` of at least 3) are failures (``on`` "fail")
    or successes; ``now`` also kills the running tasks."""

    on: Literal["fail", "success"]
    count: int
    percent: float | None
    now: bool


class ClusterConfig(TypedDict):
    """Where a cluster run goes: the caller then starts the cluster driver, not the lean
    runner, with this same config (``docs/protocol.md``, "On a Dask cluster")."""

    address: str
    """A Dask scheduler's address (``tcp://host:8786``), or ``local:N``: a LocalCluster
    of N worker processes on this machine, started and stopped by the driver."""
    parallel: int | None
    """Tasks each batch runs at once (each Dask worker thread runs one batch); None: the
    worker decides, twice its usable CPUs shared among its threads."""


class RunnerConfig(TypedDict):
    """The runner's single command-line argument, as JSON."""

    options: Options
    input: InputConfig
    ordered: bool
    """Emit results in task order rather than as tasks finish."""
    cleanup_dir: str | None
    """A private directory of the caller's, removed by the runner if the caller dies."""
    halt_rule: HaltRule | None
    """Replaces the options' ``halt`` when set."""
    slot_env: str | None
    """Set in each command task's environment to its job slot (``leanpool parallel``'s
    ``{%}``); None: no slot variable (most runs: it costs an environment per task)."""
    workers: WorkerConfig
    """The caller's interpreter and ``sys.path``, for the workers that run calls."""
    cluster: ClusterConfig | None
    """None: a local run by the lean runner; else a run on a Dask cluster."""
    spill_dir: str | None
    """Where to put an output of ``SPILL_OVER`` bytes or more, as a raw file named in the
    result instead of inline JSON; None (the CLI) keeps every output inline."""

"""The runner's configuration: the one JSON argument a caller starts it with.

``Options`` is the wire shape of a run's options and ``OPTION_DEFAULTS`` their one table
of defaults; ``leanpool._caller.options`` holds their checks and help (one spec per
option) and the type of ``TaskRunner``'s keyword arguments, and a test keeps them in
step.  ``runner_config`` is how every caller builds a config; ``complete_config`` is how
the runner (and the cluster driver) fills in what a config leaves out, so that a new
option or config key with a default is not a protocol change.  Standard library only:
the lean runner imports this module.
"""

from __future__ import annotations

import os
import sys
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, cast

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .calls import WorkerConfig

__all__ = [
    "CONFIG_DEFAULTS",
    "OPTION_DEFAULTS",
    "ClusterConfig",
    "HaltRule",
    "InputConfig",
    "Options",
    "RunnerConfig",
    "TaskFormat",
    "bare_workers",
    "complete_config",
    "default_parallel",
    "runner_config",
]

TaskFormat = Literal["jsonl", "lines"]
"""``jsonl``: one task record per line; ``lines``: one shell command per line, whose id
is its line number."""


class Options(TypedDict):
    """How to run: every key is documented in the README's option table.

    The library's callers send every key (``make_options`` fills the defaults); the
    runner fills any key a config leaves out from ``OPTION_DEFAULTS``.
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


OPTION_DEFAULTS: Final[Mapping[str, object]] = MappingProxyType(
    {
        "parallel": None,  # None: twice the usable CPUs where the run runs (default_parallel)
        "timeout": None,
        "kill_grace": 2.0,
        "kill_leftovers": True,
        "max_output": None,
        "output_dir": None,
        "retries": 0,
        "retry_delay": 0.0,
        "halt": None,
        "halt_now": False,
        "journal": None,
        "resume": False,
        "resume_failed": False,
        "preload": [],
        "max_tasks_per_worker": None,
        "max_worker_memory": None,
    }
)
"""Every option's default: the one table the caller's checks and the runner both read."""

CONFIG_DEFAULTS: Final[Mapping[str, object]] = MappingProxyType(
    {
        "ordered": False,
        "cleanup_dir": None,
        "halt_rule": None,
        "slot_env": None,
        "workers": None,  # None: this interpreter, with no path of the caller's
        "cluster": None,
        "spill_dir": None,
    }
)
"""What a config may leave out besides its options; ``input`` is the one key it needs."""


def default_parallel() -> int:
    """Twice the CPUs this process may use, as the original; 8 when that is unknown."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 4
    return 2 * cpus


def complete_config(raw: Mapping[str, Any]) -> RunnerConfig:
    """The config with every key a runner reads: what raw leaves out takes its default
    (a caller written against an older protocol 4 may send fewer options).

    Raises:
        ValueError: raw has no ``input``, or its options are not an object.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("input"), dict):
        raise ValueError("the runner's config has no input")
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise ValueError("the runner's config has options that are not an object")
    config: dict[str, Any] = {**CONFIG_DEFAULTS, **raw}
    defaults = {k: list(v) if isinstance(v, list) else v for k, v in OPTION_DEFAULTS.items()}
    config["options"] = {**defaults, **options}  # a list default is never shared
    if config["options"]["parallel"] is None:
        config["options"]["parallel"] = default_parallel()
    if config["workers"] is None:
        config["workers"] = bare_workers()
    return cast("RunnerConfig", config)


def bare_workers() -> WorkerConfig:
    """Workers of this interpreter with nothing of a caller's: for a config that runs no
    calls of the caller's own modules."""
    return {
        "executable": sys.executable or "python3",
        "path": [],
        "main_path": None,
        "main_module": None,
        "preload": [],
        "report_rss": False,
    }


def runner_config(
    options: Options,
    *,
    spool_path: str,
    workdir: str | None,
    workers: WorkerConfig | None = None,
    task_format: TaskFormat = "jsonl",
    stream: bool = True,
    ordered: bool = False,
    halt_rule: HaltRule | None = None,
    slot_env: str | None = None,
    cluster: ClusterConfig | None = None,
    spill: bool = True,
) -> RunnerConfig:
    """A run's config as every caller builds it: the tasks in ``spool_path`` (a stream
    unless said otherwise), ``workdir`` the caller's private directory, removed by the
    runner if the caller dies, and where big outputs go as files (``spill``)."""
    return {
        "options": options,
        "input": {"path": spool_path, "format": task_format, "stream": stream},
        "ordered": ordered,
        "cleanup_dir": workdir,
        "halt_rule": halt_rule,
        "slot_env": slot_env,
        "workers": workers if workers is not None else bare_workers(),
        "cluster": cluster,
        "spill_dir": workdir if spill else None,
    }

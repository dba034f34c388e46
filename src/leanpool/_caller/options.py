"""The one list of a run's options: defaults, checks and help, for the API, CLI and runner.

``OPTIONS`` has one spec per option.  ``make_options`` checks what a caller gave against
it and fills the defaults (``TaskRunner``), ``add_cli_options`` builds the ``leanpool
run`` flags from it (whose values go through ``make_options`` too), and the result is the
``options`` the runner's config carries.  ``leanpool._protocol.config.Options`` is the
same list as a type; a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypedDict, cast

from .._protocol.config import OPTION_DEFAULTS as _DEFAULT, default_parallel

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._protocol.config import Options

__all__ = [
    "OPTIONS",
    "KeywordOptions",
    "OptionSpec",
    "add_cli_options",
    "cli_options",
    "default_parallel",
    "make_options",
]


class KeywordOptions(TypedDict, total=False):
    """The options as ``TaskRunner`` takes them: every one but ``parallel`` (its first
    argument), each optional, paths as str or os.PathLike."""

    timeout: float | None
    kill_grace: float
    kill_leftovers: bool
    max_output: int | None
    output_dir: str | os.PathLike[str] | None
    retries: int
    retry_delay: float
    halt: int | None
    halt_now: bool
    journal: str | os.PathLike[str] | None
    resume: bool
    resume_failed: bool
    preload: list[str] | tuple[str, ...]
    max_tasks_per_worker: int | None
    max_worker_memory: int | None


@dataclass(frozen=True)
class OptionSpec:
    """One option.

    Attributes:
        name: its name in the API, the config and (with - for _) the CLI flag.
        kind: ``int``, ``seconds`` (int or float), ``bool``, ``path`` or ``modules``
            (module names; on the CLI, comma-separated).
        default: its value when not given, from the one table of defaults
            (``leanpool._protocol.config.OPTION_DEFAULTS``, which the runner reads too).
        help: one line for ``--help``; the README's table says more.
        minimum: the least value an ``int`` or ``seconds`` may take.
        nullable: None is a value (no limit, no file).
        flag: the CLI flag when it is not ``--name``; for a bool that defaults to True,
            the flag that turns it off.
    """

    name: str
    kind: Literal["int", "seconds", "bool", "path", "modules"]
    help: str
    minimum: float = 0
    nullable: bool = False
    flag: str | None = None
    short: str | None = None

    @property
    def default(self) -> object:
        return _DEFAULT[self.name]


OPTIONS: Final = (
    OptionSpec(
        "parallel", "int", "tasks at once (default: 2 x usable CPUs)", minimum=1, short="-j"
    ),
    OptionSpec(
        "timeout",
        "seconds",
        "seconds a task may run before its process group gets SIGTERM",
        minimum=0.001,
        nullable=True,
    ),
    OptionSpec("kill_grace", "seconds", "seconds from SIGTERM to SIGKILL (2)"),
    OptionSpec(
        "kill_leftovers",
        "bool",
        "let processes a task leaves in its group outlive it (default: kill them)",
        flag="--keep-leftovers",
    ),
    OptionSpec("max_output", "int", "keep at most BYTES of each stream per task", nullable=True),
    OptionSpec("output_dir", "path", "write task output to files in DIR", nullable=True),
    OptionSpec("retries", "int", "run a failed task again up to N times"),
    OptionSpec("retry_delay", "seconds", "seconds before each retry"),
    OptionSpec("halt", "int", "start no task after N failures", minimum=1, nullable=True),
    OptionSpec("halt_now", "bool", "with --halt, also kill the running tasks"),
    OptionSpec("journal", "path", "append each result durably to PATH", nullable=True),
    OptionSpec("resume", "bool", "skip the tasks the journal already holds"),
    OptionSpec(
        "resume_failed",
        "bool",
        "resume, but run again the tasks the journal holds as failed",
    ),
    OptionSpec(
        "preload", "modules", "import MODULES (comma-separated) in each worker as it starts"
    ),
    OptionSpec(
        "max_tasks_per_worker",
        "int",
        "replace a worker after N calls",
        minimum=1,
        nullable=True,
    ),
    OptionSpec(
        "max_worker_memory",
        "int",
        "replace a worker whose RSS is over BYTES after a call",
        minimum=1,
        nullable=True,
    ),
)
"""Every option, in the order ``--help`` shows them."""

_BY_NAME: Final = {spec.name: spec for spec in OPTIONS}


def make_options(**given: object) -> Options:
    """Check the options given, name by name, and fill in the rest.

    Paths are made absolute here, since the runner resolves nothing against the
    caller's later working directory.

    Raises:
        TypeError: an unknown option, or a value of the wrong kind (naming the option).
        ValueError: a value out of range, or options that do not go together.
    """
    options: dict[str, object] = {}
    for name in given:
        if name not in _BY_NAME:
            raise TypeError(f"unexpected option {name!r}")
    for spec in OPTIONS:
        value = given.get(spec.name, spec.default)
        if spec.name == "parallel" and value is None:
            value = default_parallel()
        options[spec.name] = _check(spec, value)
    if (options["resume"] or options["resume_failed"]) and options["journal"] is None:
        raise ValueError("resume needs a journal to resume from")
    output_dir = options["output_dir"]
    if isinstance(output_dir, str):
        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"output_dir {output_dir!r} cannot be made: {exc.strerror}") from None
    return cast("Options", options)


def _check(spec: OptionSpec, value: object) -> object:
    name = spec.name
    if value is None and spec.nullable:
        return None
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
        return value
    if spec.kind == "path":
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path, not {type(value).__name__}")
        return os.path.abspath(os.fspath(value))
    if spec.kind == "modules":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list of module names, not {type(value).__name__}")
        for module in value:
            if not isinstance(module, str) or not all(
                part.isidentifier() for part in module.split(".")
            ):
                raise ValueError(f"{name} holds {module!r}, which is not a module name")
        return list(value)
    integer = spec.kind == "int"
    if isinstance(value, bool) or not isinstance(value, (int if integer else (int, float))):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__}")
    if not (value >= spec.minimum and math.isfinite(value)):
        raise ValueError(f"{name} must be at least {spec.minimum:g}, not {value!r}")
    return value if integer else float(value)


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option; the values are converted here and checked by make_options."""
    for spec in OPTIONS:
        flags = [spec.flag or "--" + spec.name.replace("_", "-")]
        if spec.short:
            flags.insert(0, spec.short)
        if spec.kind == "bool":
            action = "store_false" if spec.default is True else "store_true"
            parser.add_argument(*flags, dest=spec.name, action=action, help=spec.help)
            continue
        convert = _CLI_TYPES[spec.kind]
        metavar = {"int": "N", "seconds": "S", "path": "PATH", "modules": "MODULES"}[spec.kind]
        if spec.name in ("max_output", "max_worker_memory"):
            metavar = "BYTES"
        elif spec.name == "output_dir":
            metavar = "DIR"
        parser.add_argument(
            *flags, dest=spec.name, type=convert, default=spec.default, metavar=metavar,
            help=spec.help,
        )  # fmt: skip


def cli_options(args: argparse.Namespace) -> Options:
    """The options among parsed CLI arguments, checked by make_options.

    Raises:
        ValueError: as make_options, with the option named as its flag.
    """
    try:
        return make_options(**{spec.name: getattr(args, spec.name) for spec in OPTIONS})
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for spec in OPTIONS:
            flag = spec.flag or "--" + spec.name.replace("_", "-")
            if spec.short:
                flag = f"{spec.short}/{flag}"
            if message.startswith(spec.name + " "):
                message = flag + message[len(spec.name) :]
        raise ValueError(message) from None


def _cli_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _cli_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def _cli_modules(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


_CLI_TYPES: Final[dict[str, Callable[[str], object]]] = {
    "int": _cli_int,
    "seconds": _cli_seconds,
    "path": str,
    "modules": _cli_modules,
}

"""Reading a ``leanpool parallel`` command line: GNU parallel's options and shape.

``leanpool parallel [OPTIONS] COMMAND... [::: VALUES...]... [:::: FILES...]...``: the
options come first, then the command template, then the input sources.  What each
option means is GNU parallel's; where leanpool differs, the README's cheat sheet says.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .._caller.options import default_parallel
from .inputs import Source

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["JOBS_ZERO_CAP", "Halt", "Job", "parse"]

JOBS_ZERO_CAP: Final = 256
"""What ``-j 0`` ("as many as possible") means here: a cap that the descriptors and
processes of a default Linux account allow, well above what any batch on one machine
gains from (GNU parallel's own limit is its file handles, about 250)."""

_SEPARATORS: Final = (":::", "::::")
_VALUED: Final = frozenset({"--timeout", "--retries", "--halt", "-a", "--arg-file", "--joblog"})
"""The options that take a value as the next word (for ``_joined_jobs``)."""


@dataclass(frozen=True)
class Halt:
    """``--halt when,what=N``: stop after N (or N percent of the jobs) failures or
    successes; ``now`` kills the running jobs, ``soon`` lets them finish.  The runner
    applies it (``HaltRule``), so no job starts after the one that met it."""

    now: bool
    on_failure: bool
    count: int
    percent: float | None


@dataclass(frozen=True)
class Job:
    """A parsed command line: the template, the sources and the options."""

    command: list[str]
    sources: list[Source]
    parallel: int
    keep_order: bool
    tag: bool
    null: bool
    link: bool
    quote: bool
    dry_run: bool
    timeout: float | None
    tries: int
    halt: Halt | None
    bar: bool
    joblog: str | None
    resume: bool
    resume_failed: bool
    json: bool


class UsageError(Exception):
    """The command line cannot be run; the message says why."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # raise, not exit
        raise UsageError(message)


def _parser() -> _Parser:
    parser = _Parser(
        prog="leanpool parallel",
        description=(
            "Run COMMAND once per input item, GNU parallel's way, at xargs speed: "
            "replacement strings {} {.} {/} {//} {/.} {#} {%} {N}, sources ::: and :::: "
            "(or stdin), output of each job printed whole as it ends."
        ),
    )
    add = parser.add_argument
    add("-j", "--jobs", "-P", dest="jobs", default=None, metavar="N",
        help="jobs at once: N, N%% of the CPUs, +N/-N CPUs, 0 as many as possible "
        f"(up to {JOBS_ZERO_CAP}); default: one per CPU")  # fmt: skip
    add("-k", "--keep-order", action="store_true", help="print output in input order")
    add("--tag", action="store_true", help="prefix each output line with its arguments")
    add("-0", "--null", action="store_true", help="items are separated by NUL, not newline")
    add("-a", "--arg-file", action="append", default=[], metavar="FILE",
        help="an input source: the lines of FILE (repeatable)")  # fmt: skip
    add("--link", "--xapply", action="store_true",
        help="take one item of each source at a time, not every combination")  # fmt: skip
    add("-q", "--quote", action="store_true",
        help="quote the command's words; values go in unquoted")  # fmt: skip
    add("--dry-run", action="store_true", help="print the commands instead of running them")
    add("--timeout", type=float, default=None, metavar="S", help="kill a job after S seconds")
    add("--retries", type=int, default=1, metavar="N", help="try a failing job N times in all")
    add("--halt", default=None, metavar="WHEN,WHAT=N",
        help="now|soon,fail|success=N|N%%: stop after so many; or 0, 1, 2")  # fmt: skip
    add("--bar", "--eta", dest="bar", action="store_true", help="a progress bar on stderr")
    add("--joblog", default=None, metavar="FILE",
        help="leanpool's journal: every job's result, outputs included")  # fmt: skip
    add("--resume", action="store_true", help="with --joblog, skip the jobs it holds")
    add("--resume-failed", action="store_true",
        help="with --joblog, skip the jobs it holds as succeeded")  # fmt: skip
    add("--json", action="store_true", help="print leanpool's JSON result records instead")
    add("command", nargs=argparse.REMAINDER, help="the command template, then the sources")
    return parser


def parse(argv: Sequence[str]) -> Job:
    """The Job a command line describes.

    Raises:
        UsageError: it cannot be run, with the reason.
    """
    args = _parser().parse_args(_joined_jobs(argv))
    command: list[str] = []
    sources: list[Source] = [Source(path=path) for path in args.arg_file]
    words = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    index = 0
    while index < len(words) and words[index] not in _SEPARATORS:
        command.append(words[index])
        index += 1
    while index < len(words):
        separator = words[index]
        index += 1
        group: list[str] = []
        while index < len(words) and words[index] not in _SEPARATORS:
            group.append(words[index])
            index += 1
        if separator == ":::":
            sources.append(Source(values=group))
        else:
            sources.extend(Source(path=path) for path in group)
    if not command:
        raise UsageError("no command: say what to run, e.g. leanpool parallel gzip {} ::: *.log")
    if args.retries < 0:
        raise UsageError("--retries must be at least 0")
    if args.timeout is not None and not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise UsageError("--timeout must be a positive number of seconds")
    if (args.resume or args.resume_failed) and not args.joblog:
        raise UsageError("--resume needs --joblog, the journal to resume from")
    return Job(
        command=command,
        sources=sources,
        parallel=_jobs(args.jobs),
        keep_order=args.keep_order,
        tag=args.tag,
        null=args.null,
        link=args.link,
        quote=args.quote,
        dry_run=args.dry_run,
        timeout=args.timeout,
        tries=max(args.retries, 1),
        halt=_halt(args.halt),
        bar=args.bar,
        joblog=None if args.joblog is None else os.path.abspath(args.joblog),
        resume=args.resume,
        resume_failed=args.resume_failed,
        json=args.json,
    )


def _joined_jobs(argv: Sequence[str]) -> list[str]:
    """``-j -1`` as ``--jobs=-1``: argparse would take ``-1`` for an option (``-0`` is
    one), and the value of -j is never the command."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word in ("-j", "--jobs", "-P"):
            value = next(words, None)
            out.append("--jobs" if value is None else f"--jobs={value}")
            if value is None:
                break
        elif word in _VALUED:
            out.append(word)
            out.extend(next(words, "") for _ in range(1))
        elif not word.startswith("-") or word == "--":
            out.append(word)
            out.extend(words)
            break
        else:
            out.append(word)
    return out


def _jobs(text: str | None) -> int:
    cpus = default_parallel() // 2
    if text is None:
        return cpus
    try:
        if text.endswith("%"):
            return max(1, math.floor(cpus * float(text[:-1]) / 100))
        if text.startswith(("+", "-")):
            return max(1, cpus + int(text))
        jobs = int(text)
    except ValueError:
        raise UsageError(f"-j takes N, N%, +N, -N or 0, not {text!r}") from None
    if jobs < 0:
        raise UsageError(f"-j takes N, N%, +N, -N or 0, not {text!r}")
    return JOBS_ZERO_CAP if jobs == 0 else jobs


def _halt(text: str | None) -> Halt | None:
    """GNU parallel's --halt: 0 (never), 1 (soon,fail=1), 2 (now,fail=1), or
    ``now|soon,fail|success=N|N%``."""
    if text is None or text == "0":
        return None
    if text in ("1", "2"):
        return Halt(now=text == "2", on_failure=True, count=1, percent=None)
    when, _, rule = text.partition(",")
    what, _, amount = rule.partition("=")
    if when not in ("now", "soon") or what not in ("fail", "success") or not amount:
        raise UsageError(f"--halt takes now|soon,fail|success=N|N%, not {text!r}")
    try:
        if amount.endswith("%"):
            percent = float(amount[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return Halt(now=when == "now", on_failure=what == "fail", count=0, percent=percent)
        count = int(amount)
        if count < 1:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"--halt takes a count of at least 1 or a percentage, not {amount!r}"
        ) from None
    return Halt(now=when == "now", on_failure=what == "fail", count=count, percent=None)

"""When a run halts because of its results: one rule for the lean runner's loop and the
cluster driver.

Two ways to ask for it: the ``halt`` option (start nothing more after that many
failures; ``halt_now`` kills the running tasks too) and, from ``leanpool parallel``,
GNU parallel's ``--halt when,what=N|N%`` (``halt_rule``, which replaces the option:
failures or successes, a count or a percentage of at least 3 results).  Both are one
``HaltRule`` here, looked at after every final result.  Standard library only: the lean
runner imports this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .._protocol.config import HaltRule, Options

__all__ = ["Halt", "Halts"]


class Halt(NamedTuple):
    """The run must halt: ``now`` also kills the running tasks; ``reason`` is the line
    the run warns with."""

    now: bool
    reason: str


class Halts:
    """The run's halt rule, if any (``rule``: None when nothing halts it)."""

    def __init__(self, options: Options, rule: HaltRule | None) -> None:
        if rule is None and options["halt"] is not None:
            rule = {
                "on": "fail",
                "count": options["halt"],
                "percent": None,
                "now": options["halt_now"],
            }
        self.rule = rule
        self.sees_successes = rule is not None and (
            rule["on"] == "success" or rule["percent"] is not None
        )
        """Whether a success can make the run halt: a rule that counts successes, or a
        percentage (whose "of at least 3 results" a success may complete).  A count of
        failures is never reached by a success."""

    def after(self, completed: int, failed: int) -> Halt | None:
        """Whether the run must halt now that ``completed`` results are in, ``failed``
        of them failures (asked once per result, until the run halts)."""
        rule = self.rule
        if rule is None:
            return None
        seen = failed if rule["on"] == "fail" else completed - failed
        percent = rule["percent"]
        if percent is not None:
            reached = completed >= 3 and seen * 100 >= percent * completed
        else:
            reached = seen >= rule["count"]
        if not reached:
            return None
        what = "failed" if rule["on"] == "fail" else "succeeded"
        return Halt(rule["now"], f"{seen} task(s) {what}: starting no more tasks")

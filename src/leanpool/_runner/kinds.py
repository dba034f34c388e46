"""Which kind of child runs which kind of task: the one place a new kind is registered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._protocol.tasks import CallTask, CommandTask
from .calls import start_call
from .shell import start_shell

if TYPE_CHECKING:
    from .._protocol.tasks import Task
    from .children import ChildKind

__all__ = ["CHILD_KINDS"]

CHILD_KINDS: Final[dict[type[Task], ChildKind]] = {
    CommandTask: start_shell,
    CallTask: start_call,
}

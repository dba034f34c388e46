"""leanpool: run very many tasks (shell commands, Python calls) in parallel from a big
Python program.

The pool runs in a separate, lean process, so the cost of starting a task does not
depend on how much memory the caller holds.  See ``TaskRunner``, ``run_tasks`` and
``Executor``.
"""

from ._api import TaskRunner as TaskRunner, arun_tasks as arun_tasks, run_tasks as run_tasks
from ._caller.result import Result as Result, RunSummary as RunSummary
from ._errors import (
    ClusterError as ClusterError,
    JournalError as JournalError,
    LeanpoolError as LeanpoolError,
    ProtocolError as ProtocolError,
    RunnerCrashed as RunnerCrashed,
    RunnerError as RunnerError,
    TaskFailed as TaskFailed,
    TaskFileError as TaskFileError,
)
from ._executor import Executor as Executor

__all__ = [
    "ClusterError",
    "Executor",
    "JournalError",
    "LeanpoolError",
    "ProtocolError",
    "Result",
    "RunSummary",
    "RunnerCrashed",
    "RunnerError",
    "TaskFailed",
    "TaskFileError",
    "TaskRunner",
    "arun_tasks",
    "run_tasks",
]

__version__ = "0.1.0.dev0"

# Public objects say they live in leanpool, not in a private module, in reprs and tracebacks.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name

"""Which leanpool a benchmark measures: ``--src DIR``, read before argparse runs.

It decides which leanpool is imported, and so which runner and workers start, so that a
long run measures one fixed copy of the code (``git archive COMMIT src``, unpacked)
while the checkout changes.  Without it, the installed package; in a bare checkout,
its source tree.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["use_source_dir"]


def use_source_dir(argv: list[str]) -> str | None:
    """Put the leanpool that argv's ``--src`` names first on sys.path; return its path."""
    source = None
    for i, arg in enumerate(argv):
        if arg == "--src" and i + 1 < len(argv):
            source = os.path.abspath(argv[i + 1])
        elif arg.startswith("--src="):
            source = os.path.abspath(arg.split("=", 1)[1])
    if source is not None:
        sys.path.insert(0, source)
    elif importlib.util.find_spec("leanpool") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    return source

"""Which leanpool a benchmark measures: ``--src DIR``, read before argparse runs.

It decides which leanpool is imported, and so which runner and workers start, so that a
long run measures one fixed copy of the code (``git archive COMMIT src``, unpacked)
while the checkout changes.  Without it, the installed package; in a bare checkout,
its source tree.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = ["build_engine", "source_hash", "use_source_dir"]


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


def build_engine(package_dir: str) -> bool:
    """Make sure the leanpool package at package_dir has its C engine: compile its units
    (every ``_runner/_*.c``: ``_engine.c`` alone before the split by concern, then
    ``_engine.c``, ``_codec.c`` and ``_module.c``) in place when the tree has the source
    and no build (a ``git archive`` of src/), as ``pip install`` would.  False when it
    has none."""
    runner = Path(package_dir) / "_runner"
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    if (runner / f"_engine{suffix}").exists():
        return True
    units = [str(unit) for unit in sorted(runner.glob("_*.c"))]
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not units or compiler is None:
        return False
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        [compiler, "-O2", "-std=gnu11", "-shared", "-fPIC", f"-I{include}", *units,
         "-o", str(runner / f"_engine{suffix}")],
        check=True,
    )  # fmt: skip
    return True


def source_hash(package_dir: str) -> tuple[str, int]:
    """The SHA-256 of a package's source, and the number of files it covers.

    Over every ``*.py``, ``*.c`` and ``*.h`` file under package_dir (before the C engine,
    the hashes recorded on the benchmark pages covered ``*.py`` only; a tree with no
    header hashes as it did before headers counted), sorted by its path
    relative to package_dir ("/"-separated): the path, a NUL, the file's size in decimal,
    a NUL, and its bytes.  Two trees hash alike exactly when they hold the same .py, .c
    and .h files with the same contents, wherever they are.  To name the commit a hash is of:
    ``git archive COMMIT src | tar -x -C DIR`` then
    ``bench.py --source-hash DIR/src/leanpool``.
    """
    root = Path(package_dir)
    files = sorted(
        (p.relative_to(root).as_posix(), p)
        for pattern in ("*.py", "*.c", "*.h")
        for p in root.rglob(pattern)
        if p.is_file()
    )
    digest = hashlib.sha256()
    for rel, path in files:
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest(), len(files)

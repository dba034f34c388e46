"""Every snippet of the README runs as written, from a checkout (with the venv of its
second set-up command): the Python ones, and the shell ones but the set-up commands
themselves (CI runs those, as ``.ci/run``) and the benchmark (minutes long)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cannot_fault

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)
SHELL = [
    block
    for block in re.findall(r"```sh\n(.*?)```", README, re.S)
    if "pip install" not in block and "benchmarks/" not in block
]


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_python_snippet_runs(code: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout  # every snippet shows what it did


def test_the_readme_has_shell_snippets() -> None:
    assert len(SHELL) >= 4


@pytest.mark.parametrize("code", SHELL, ids=[f"shell{i}" for i in range(len(SHELL))])
def test_readme_shell_snippet_runs(code: str) -> None:
    if not (ROOT / ".venv" / "bin" / "leanpool").exists():
        cannot_fault("no .venv in the checkout: run the README's set-up command first")
    proc = subprocess.run(
        ["sh", "-e", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

"""Every integration test of the runner runs twice: on its C engine and in pure Python.

The engine (``leanpool._runner._engine``) starts, drains and reaps commands and is the
loop's epoll set; without it (not built, or ``LEANPOOL_PURE_PYTHON=1``) the runner does
the same in Python.  Both must keep every guarantee, so both are tested end to end:
the switch is our own environment variable, which every runner a test starts inherits.
"""

from __future__ import annotations

import pytest

from leanpool._runner.piped import PURE_PYTHON_ENV


@pytest.fixture(autouse=True, params=["engine", "python"])
def runner_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which path the runners of this test take (``engine``: the C engine, where built)."""
    if request.param == "python":
        monkeypatch.setenv(PURE_PYTHON_ENV, "1")
    else:
        monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    return str(request.param)

"""The optional C fast path of the lean runner (``leanpool._runner._engine``).

Everything else is in pyproject.toml.  The extension is ``optional``: where no C compiler
(or no Python headers) is found, the build goes on without it and the runner does the
same work in Python.  Set ``LEANPOOL_NO_EXTENSION=1`` to skip it on purpose.
"""

import os

from setuptools import Extension, setup

extensions = []
if not os.environ.get("LEANPOOL_NO_EXTENSION"):
    extensions.append(
        Extension(
            "leanpool._runner._engine",
            sources=["src/leanpool/_runner/_engine.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=gnu11"],
        )
    )

setup(ext_modules=extensions)

"""The optional C fast path of the lean runner (``leanpool._runner._engine``).

Everything else is in pyproject.toml.  The extension is ``optional``: where no C compiler
(or no Python headers) is found, the build goes on without it and the runner does the
same work in Python.  Set ``LEANPOOL_NO_EXTENSION=1`` to skip it on purpose.
"""

import os

from setuptools import Extension, setup

ENGINE_SOURCES = [
    "src/leanpool/_runner/_engine.c",  # the process engine, the Engine type's methods
    "src/leanpool/_runner/_codec.c",  # the result line's encoder, the plain task line's parser
    "src/leanpool/_runner/_module.c",  # the module's initialisation, an Engine's life cycle
]
"""The engine's translation units (tests/mutate.py reads this list to build a mutant)."""
ENGINE_HEADERS = ["src/leanpool/_runner/_engine.h", "src/leanpool/_runner/_codec.h"]
"""What the units share: a change to one rebuilds the engine (MANIFEST.in ships them)."""

extensions = []
if not os.environ.get("LEANPOOL_NO_EXTENSION"):
    extensions.append(
        Extension(
            "leanpool._runner._engine",
            sources=ENGINE_SOURCES,
            depends=ENGINE_HEADERS,
            optional=True,
            extra_compile_args=["-O2", "-std=gnu11"],
        )
    )

setup(ext_modules=extensions)

"""``python -m leanpool``: the same as the ``leanpool`` command."""

import sys

from ._cli import main

sys.exit(main())

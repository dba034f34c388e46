"""The caller's side of the protocol: the one option list, starting a runner and reading
its records, the ``/proc`` sweep after a runner death, and the ``Result`` value type.

Nothing here is imported by the runner.
"""

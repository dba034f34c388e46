"""The caller's side of the protocol: the one option list, the records of a command
(``commands``) and of a call (``calls``), starting a runner and reading its records, the
``/proc`` sweep after a runner death, and the ``Result`` value type.

Nothing here is imported by the runner.
"""

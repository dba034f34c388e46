"""The caller-runner protocol, shared by both sides: task kinds and their checks, the
typed records and their encoding, the runner's configuration, the record reader, the
spool and the journal.

Standard library only, and nothing here imports the caller's side: the lean runner
imports this package.  ``docs/protocol.md`` is its written form.
"""

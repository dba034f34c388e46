"""Runs on a Dask cluster: the same task file, journal and protocol, on many machines.

::

    caller ──spool, control──► driver (this package) ──batches──► Dask scheduler
       ▲                          │   ▲                               │
       └──── protocol records ────┘   └──── each batch's results ◄── worker: run_batch
                                   (journal first)                    └► lean runner ► tasks

Rooms: ``driver`` (the process the caller starts instead of the lean runner: intake,
batches in flight, journal and output, stopping), ``sizing`` (how big a batch is, how
many are in flight), ``batch`` (what runs on a Dask worker: one batch through the local
lean runner, and the controls that stop it).  ``connect`` names the cluster a caller
asked for.  Only the driver and the workers import dask; the caller never does, and
the lean runner never imports this package.
"""

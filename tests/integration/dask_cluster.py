"""A Dask LocalCluster on 127.0.0.1 in a process of its own, for the cluster tests.

Prints the scheduler's address on stdout, then serves until its stdin closes (or it is
killed: the tests that make "the cluster goes away" kill its process group).  Its own
process, not the test's, so that the test process holds no Dask thread, socket or
child of Dask's, and a test can kill the whole cluster.

Usage: ``python dask_cluster.py WORKERS``.  Started with ``-S`` and a PYTHONPATH of
site-packages only, its workers have no leanpool (the editable install's path comes from
a .pth file, which -S skips); with a copy of leanpool first on that path, they have that
copy (the protocol-mismatch test).  Workers inherit its ``sys.path`` (spawn).
"""

from __future__ import annotations

import sys

from distributed import LocalCluster


def main() -> None:
    cluster = LocalCluster(
        n_workers=int(sys.argv[1]),
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",  # a free port: no warning when 8787 is busy
    )
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()  # until the test closes it
    cluster.close(timeout=5)


if __name__ == "__main__":
    main()

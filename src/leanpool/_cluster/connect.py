"""Naming the cluster a caller asked for: an address, ``local:N``, or a Client."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._protocol.config import ClusterConfig

__all__ = ["cluster_config"]

_LOCAL = re.compile(r"local:[1-9][0-9]*\Z")
_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://\S+\Z")


def cluster_config(cluster: object, parallel: int | None) -> ClusterConfig | None:
    """The config's ``cluster`` for what ``TaskRunner(cluster=...)`` or ``--cluster`` got.

    Args:
        cluster: None (a local run); a scheduler address (``tcp://host:8786``);
            ``local:N`` (a LocalCluster of N workers, for trying it); or a
            ``distributed.Client``, whose scheduler's address is taken (the driver
            makes its own connection: the client stays the caller's).
        parallel: the tasks each batch runs at once, if the caller chose.

    Raises:
        ValueError, TypeError: not one of those.
    """
    if cluster is None:
        return None
    if not isinstance(cluster, str):
        scheduler = getattr(cluster, "scheduler", None)
        address = getattr(scheduler, "address", None)
        if not isinstance(address, str):
            raise TypeError(
                "cluster must be a scheduler address, 'local:N' or a distributed.Client, "
                f"not {type(cluster).__name__}"
            )
        cluster = address
    if not (_LOCAL.match(cluster) or _ADDRESS.match(cluster)):
        raise ValueError(
            f"cluster must be a scheduler address such as tcp://host:8786, or local:N "
            f"with N >= 1, not {cluster!r}"
        )
    return {"address": cluster, "parallel": parallel}

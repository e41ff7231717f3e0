"""The node config a ClientApp runs under, on a real SuperNode or a virtual one.

A real SuperNode is started with its institution's ``node_config``
(``institution``, ``data-dir``, ``state-dir``; :class:`common.protocol.NodeConfig`
parses it). A virtual SuperNode of Flower's Simulation Engine has only
``partition-id`` and ``num-partitions``, and plays its partition's entry in
the simulation's roster (:mod:`client.simulation`). Every handler of the
ClientApp reads its node config through :func:`node_config_of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Context

from client.simulation import PARTITION_ID, roster_entry

__all__ = ["node_config_of"]


def node_config_of(context: Context) -> Mapping[str, Any]:
    """The node config this ClientApp runs under: the SuperNode's, or its roster entry.

    Raises
    ------
    NodeConfigError
        A virtual SuperNode without a roster, or whose partition the roster
        does not have (a roster written for another simulation).
    """
    config = context.node_config
    if "institution" in config or PARTITION_ID not in config:
        return config  # a real SuperNode (NodeConfig.from_mapping checks it)
    return roster_entry(config)

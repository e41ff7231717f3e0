"""Which institution a virtual SuperNode of Flower's Simulation Engine plays.

A real SuperNode is started with its institution's ``node_config``
(``institution``, ``data-dir``, ``state-dir``). Flower's Simulation Engine
gives each virtual SuperNode only ``partition-id`` and ``num-partitions``, so
``fedcommons simulate`` writes a roster -- one node config per partition, in
order -- and names it in :data:`ROSTER_ENV` in the environment of the
simulation's processes. :func:`roster_entry` is a virtual SuperNode's entry;
the ClientApp's handlers reach it through :func:`client.node_config.node_config_of`.

The roster only ever comes from the environment of the machine running the
simulation, never from a message or the run config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from common.protocol import NodeConfig, NodeConfigError

__all__ = ["NUM_PARTITIONS", "PARTITION_ID", "ROSTER_ENV", "roster_entry", "write_roster"]

ROSTER_ENV = "FEDCOMMONS_SIMULATION_ROSTER"
"""Names the roster file in a simulation's environment (unset everywhere else)."""

PARTITION_ID = "partition-id"
"""The node config key that marks a virtual SuperNode (Flower's)."""
NUM_PARTITIONS = "num-partitions"


def write_roster(path: Path, nodes: Sequence[NodeConfig]) -> Path:
    """Write the roster: virtual SuperNode ``i`` plays ``nodes[i]``."""
    entries = []
    for node in nodes:
        entry: dict[str, Any] = {
            "institution": node.institution,
            "data-dir": str(node.data_dir.resolve()),
            "torch-threads": node.torch_threads,
            "encoder-cache": node.encoder_cache,
        }
        if node.state_dir is not None:
            entry["state-dir"] = str(node.state_dir.resolve())
        entries.append(entry)
    write_atomic(path, json.dumps({"nodes": entries}, indent=1) + "\n")
    return path


@lru_cache(maxsize=4)
def _roster(path: str) -> tuple[Mapping[str, Any], ...]:
    try:
        nodes = json.loads(Path(path).read_text(encoding="utf-8"))["nodes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NodeConfigError(
            f"the simulation roster {path} ({ROSTER_ENV}) is unusable: {err}"
        ) from None
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise NodeConfigError(f"the simulation roster {path} ({ROSTER_ENV}) is not a list of nodes")
    return tuple(nodes)


def roster_entry(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The roster entry a virtual SuperNode plays, by its ``partition-id``.

    Raises
    ------
    NodeConfigError
        No roster in the environment, or the roster has no entry for this
        partition (a roster written for another simulation).
    """
    roster = os.environ.get(ROSTER_ENV)
    if not roster:
        raise NodeConfigError(
            f"a virtual SuperNode (partition {config[PARTITION_ID]}) but no {ROSTER_ENV}: "
            "run simulations with 'fedcommons simulate'"
        )
    nodes = _roster(roster)
    partition, partitions = config[PARTITION_ID], config.get(NUM_PARTITIONS)
    if (
        partitions != len(nodes)
        or not isinstance(partition, int)
        or not 0 <= partition < len(nodes)
    ):
        raise NodeConfigError(
            f"virtual SuperNode {partition!r} of {partitions!r}, but the roster {roster} "
            f"has {len(nodes)} nodes"
        )
    return nodes[partition]

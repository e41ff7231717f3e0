"""What a participant runs beside its data: the ClientApp and the node's own state.

The ClientApp's handlers (:mod:`client.client_app`) and what a node does in
them (:mod:`client.task`: training with DP), the node config they run under
(:mod:`client.node_config`; a virtual SuperNode's comes from the simulation's
roster, :mod:`client.simulation`), sealing updates (:mod:`client.sealing`),
enrolment (:mod:`client.enrolment`), the privacy accountant
(:mod:`client.accountant`), the receipt book (:mod:`client.receipts`) and its check of the
node's own entries (:mod:`client.own_entries`), the witness quorum that
establishes what it keeps (:mod:`client.quorum`, :mod:`client.witnessing`), the
charges nobody has receipted yet (:mod:`client.owed`), the frozen-encoder
cache (:mod:`client.encoder_cache`), starting the SuperNode
(:mod:`client.supernode`) with its warm ClientApp runner (:mod:`client.warm`)
and ``fedcommons client ...`` (:mod:`client.cli`). Imports only :mod:`common`.
"""

__all__ = [
    "accountant",
    "cli",
    "client_app",
    "encoder_cache",
    "enrolment",
    "node_config",
    "owed",
    "own_entries",
    "quorum",
    "receipts",
    "sealing",
    "simulation",
    "supernode",
    "task",
    "warm",
    "witnessing",
]

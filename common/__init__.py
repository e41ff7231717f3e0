"""Contracts the server and the clients share: what both sides write and read.

Policy, protocol keys and message parsing, the sealed-update envelope,
canonical JSON, Merkle proofs and receipts, the checkpoints a node keeps as
evidence, signed notes, signed tree heads and cosignatures, a run's members
and witness quorum, keys, licences, the consortium file and enrolment
requests, models and data readers, the base class of user errors, command
output, and the processes a federation starts. Nothing here imports
``client``, ``server``, ``ledger``, ``audit`` or the CLI.
"""

__all__ = [
    "arrays",
    "atomic",
    "bert",
    "bert_top",
    "canonical",
    "consortium",
    "dp",
    "envelope",
    "epsilon",
    "errors",
    "evidence",
    "images",
    "keys",
    "licences",
    "local_data",
    "merkle",
    "merkle_log",
    "model",
    "note",
    "output",
    "policy",
    "processes",
    "protocol",
    "quorum",
    "receipts",
    "sent",
    "shapley",
    "text",
    "tls",
    "training",
    "tree_head",
    "witness",
]

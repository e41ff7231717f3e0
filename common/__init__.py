"""Contracts the server and the clients share: what both sides write and read.

Policy, protocol keys and message parsing, the sealed-update envelope,
canonical JSON, Merkle proofs and receipts, keys, licences, the consortium
file and enrolment requests, models and data readers. Nothing here imports
``client``, ``server``, ``audit`` or the CLI.
"""

__all__ = [
    "arrays",
    "atomic",
    "bert",
    "canonical",
    "consortium",
    "dp",
    "envelope",
    "epsilon",
    "images",
    "keys",
    "licences",
    "local_data",
    "merkle",
    "merkle_log",
    "model",
    "policy",
    "protocol",
    "receipts",
    "text",
    "tls",
    "training",
]

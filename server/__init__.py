"""What the operator runs: the ServerApp, its strategy, the ledger, consortium and releases.

Imports only :mod:`common`; ``fedcommons operator ...`` is :mod:`server.cli`.
"""

__all__ = [
    "card",
    "cli",
    "consortium",
    "deploy",
    "flower",
    "grid",
    "ledger",
    "model_card",
    "progress",
    "release",
    "runs",
    "server_app",
    "snapshots",
    "strategy",
]

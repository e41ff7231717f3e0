"""FedCommons aggregation server: the ServerApp, its strategy and the ledger."""

__all__ = ["checkpoint", "grid", "ledger", "server_app", "strategy"]

"""FedCommons client node: the ClientApp and what it does with local data."""

__all__ = ["client_app", "task"]

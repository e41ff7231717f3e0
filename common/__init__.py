"""Code shared by server and clients: policy, data, models, training."""

__all__ = ["data", "model", "policy", "records", "training"]

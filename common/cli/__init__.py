"""The ``fedcommons`` console command, one module per user group."""

__all__ = ["app"]

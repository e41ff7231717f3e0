"""The one base class of every error a user (or a hostile peer's input) can cause.

Each room defines its own errors (``PolicyError``, ``LedgerError``, ...) and
also derives them from :class:`UserError`, so the ``fedcommons`` command can
turn any of them into one line without importing the rooms that raise them.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error whose message tells the user what went wrong and what to do: no traceback."""

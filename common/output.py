"""How a command prints its result: for people, or as JSON for machines."""

from __future__ import annotations

from enum import Enum

__all__ = ["OutputFormat"]


class OutputFormat(str, Enum):
    """``--format``: ``text`` (tables and sentences for people) or ``json`` (for machines)."""

    text = "text"
    json = "json"

"""Canonical JSON: the one byte form FedCommons signs and hashes.

Sorted keys, no spaces, ASCII, no NaN. Enrolment requests, envelope headers,
ledger entries, signed tree heads and receipts all use :func:`canonical_json`, so a
document that verifies in one place verifies everywhere.

Ledger entries and what is signed over them go further and hold no floats
(``floats_as_strings=True``): a float is written as the string of its
shortest round-tripping decimal form (``repr``), so every backend and
language reads back the same bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["canonical_json"]


_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
).encode
"""Built once: ``json.dumps`` with these arguments builds this encoder on every call."""


def _without_floats(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, dict):
        return {str(k): _without_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_floats(v) for v in value]
    raise TypeError(f"canonical JSON cannot hold {type(value).__name__}: {value!r}")


def canonical_json(doc: Any, *, floats_as_strings: bool = False) -> bytes:
    """``doc`` as canonical JSON bytes (sorted keys, no spaces, ASCII, no NaN).

    Raises
    ------
    ValueError
        ``doc`` holds NaN or an infinity (and ``floats_as_strings`` is off).
    TypeError
        ``doc`` holds something JSON cannot (with ``floats_as_strings``, this
        is checked for every value).
    """
    if floats_as_strings:
        doc = _without_floats(doc)
    return _encode(doc).encode("ascii")

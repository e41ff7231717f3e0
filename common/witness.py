"""The cosignatures a node returns, on the wire: which checkpoint, and the signature line.

A node's reply (to a train message, or to the query carrying the last
round's receipts) holds a ``ConfigRecord`` under :data:`COSIGNATURES` with
three lists of equal length: the cosigned checkpoints' tree sizes, their hex
roots, and the ``cosignature/v1`` lines (:func:`common.note.cosign`). The
server checks each line itself; this module only carries them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ConfigRecord

from common.tree_head import is_hex_digest

__all__ = ["COSIGNATURES", "MAX_COSIGNATURES", "Cosigned", "cosignature_record", "cosignatures_of"]

COSIGNATURES = "fedcommons.cosignatures"
"""``ConfigRecord`` of the checkpoints a node cosigned (its reply's)."""
MAX_COSIGNATURES = 64
"""More lines than this in one reply are refused unread (a node cosigns a handful)."""


@dataclass(frozen=True)
class Cosigned:
    """One cosignature: the checkpoint's tree size and hex root, and the signature line."""

    tree_size: int
    root: str
    line: str


def cosignature_record(items: Sequence[Cosigned]) -> ConfigRecord:
    """The record a node's reply carries its cosignatures in."""
    return ConfigRecord(
        {
            "tree_sizes": [c.tree_size for c in items],
            "roots": [c.root for c in items],
            "lines": [c.line for c in items],
        }
    )


def cosignatures_of(record: ConfigRecord) -> list[Cosigned]:
    """The cosignatures in a reply's record; ``ValueError`` says what is malformed."""
    sizes, roots, lines = (record.get(k) for k in ("tree_sizes", "roots", "lines"))
    if not all(isinstance(v, list) for v in (sizes, roots, lines)):
        raise ValueError("a cosignatures record needs lists tree_sizes, roots and lines")
    assert isinstance(sizes, list) and isinstance(roots, list) and isinstance(lines, list)
    if not len(sizes) == len(roots) == len(lines):
        raise ValueError("a cosignatures record's lists differ in length")
    if len(lines) > MAX_COSIGNATURES:
        raise ValueError(f"{len(lines)} cosignatures in one reply (at most {MAX_COSIGNATURES})")
    found = []
    for size, root, line in zip(sizes, roots, lines, strict=True):
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < 2**63:
            raise ValueError(f"cosigned tree size {size!r} is not a positive 64-bit integer")
        if not isinstance(root, str) or not isinstance(line, str) or len(line) > 1024:
            raise ValueError("a cosigned root or line is not text (or is over 1 KiB)")
        if not is_hex_digest(root):
            raise ValueError(f"cosigned root {root[:70]!r} is not a hex SHA-256 digest")
        found.append(Cosigned(size, root, line))
    return found

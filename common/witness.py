"""The cosignatures a node returns, on the wire: which checkpoint, and the signature line.

A node's reply (to a train message, or to the query carrying the last
round's receipts) holds a ``ConfigRecord`` under :data:`COSIGNATURES` with
three lists of equal length: the cosigned checkpoints' tree sizes, their hex
roots, and the ``cosignature/v1`` lines (:func:`common.note.cosign`). The
server checks each line itself; this module only carries them.

The other way, a message to a node may hold a ``ConfigRecord`` under
:data:`WITNESSES`: every member's cosignature the server kept on the
checkpoint that node last cosigned, so the node counts them against its
quorum (:mod:`client.quorum`); the node checks each line itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ConfigRecord

from common.tree_head import is_hex_digest

__all__ = [
    "COSIGNATURES",
    "MAX_COSIGNATURES",
    "WITNESSES",
    "Cosigned",
    "Witnessed",
    "cosignature_record",
    "cosignatures_of",
    "witnessed_of",
    "witnessed_record",
]

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


WITNESSES = "fedcommons.witnesses"
"""``ConfigRecord`` of the members' cosignatures on one checkpoint (the server's message)."""


@dataclass(frozen=True)
class Witnessed:
    """What the server tells a node: the cosignature lines kept on one checkpoint.

    ``final``: the run's last message to the node; a receipt still without
    its quorum after it never reaches one (``no-quorum``).
    """

    tree_size: int
    root: str
    lines: tuple[str, ...]
    final: bool = False


def witnessed_record(witnessed: Witnessed) -> ConfigRecord:
    """The record a message carries the cosignatures of a checkpoint in."""
    return ConfigRecord(
        {
            "tree_size": witnessed.tree_size,
            "root": witnessed.root,
            "lines": list(witnessed.lines),
            "final": witnessed.final,
        }
    )


def witnessed_of(record: ConfigRecord) -> Witnessed:
    """The cosignatures a message's record carries; ``ValueError`` says what is malformed.

    A tree size of 0 (with an empty root) carries no checkpoint, only ``final``.
    """
    size, root, lines, final = (record.get(k) for k in ("tree_size", "root", "lines", "final"))
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**63:
        raise ValueError(f"witnessed tree size {size!r} is not a 64-bit integer")
    if not isinstance(final, bool) or not isinstance(lines, list) or not isinstance(root, str):
        raise ValueError("a witnesses record needs tree_size, root, lines and final")
    if size and not is_hex_digest(root):
        raise ValueError(f"witnessed root {root[:70]!r} is not a hex SHA-256 digest")
    if len(lines) > MAX_COSIGNATURES or not all(
        isinstance(line, str) and len(line) <= 1024 for line in lines
    ):
        raise ValueError(f"at most {MAX_COSIGNATURES} cosignature lines of at most 1 KiB each")
    return Witnessed(size, root, tuple(str(line) for line in lines), final)

"""Check 6: every signed tree head is well formed, signed, and has the root of its entries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.merkle import TreeBuilder
from common.receipts import TreeHeadError
from ledger.schema import LedgerTreeHead, LogOrigin
from ledger.tree_heads import tree_head_from_columns
from ledger.verify.entries import STREAM
from ledger.verify.result import LedgerTampered

__all__ = ["Signed", "check_tree_heads", "read_tree_heads", "tree_head_columns"]

Signed = tuple[int, str, str]
"""What the tree checks need of a well-formed signed tree head: its tree size, root and time."""


def tree_head_columns() -> Any:
    return select(
        LedgerTreeHead.id,
        LedgerTreeHead.tree_size,
        LedgerTreeHead.root_hash,
        LedgerTreeHead.body,
        LedgerTreeHead.key_id,
        LedgerTreeHead.signature,
        LedgerTreeHead.checkpoint,
        LedgerTreeHead.signed_at,
        LedgerTreeHead.label,
    ).order_by(LedgerTreeHead.id)


def read_tree_heads(
    rows: Iterable[Any], operator: Ed25519PublicKey | None, origin: str | None = None
) -> tuple[list[Signed], str | None]:
    """Check each stored signed tree head on its own, in id order; stop at the first that fails.

    A checkpoint must be of the log ``origin`` (the ledger's, once it has one).

    Returns
    -------
    list of (tree_size, root, at)
        The heads that passed, before the first that failed.
    str or None
        The :class:`TreeHeadError` message of the first that failed.
    """
    signed: list[Signed] = []
    for row in rows:
        try:
            head = tree_head_from_columns(*row)
            if operator is not None:
                head.verify(operator, origin)
            elif head.checkpoint is not None:
                head.check_checkpoint(origin)
        except TreeHeadError as err:
            return signed, str(err)
        signed.append((head.tree_size, head.root, head.at))
    return signed, None


def check_tree_heads(
    session: Session,
    leaves: list[bytes],
    operator: Ed25519PublicKey | None,
    parts: Sequence[Future[tuple[list[Signed], str | None]]] = (),
) -> tuple[int, bytes]:
    """Check the stored heads against ``leaves``; return their count and the tree root.

    The root of all ``leaves`` comes from the same pass that gives each
    head's root.
    """
    read = [future.result() for future in parts]
    if not read:
        origin = session.scalar(select(LogOrigin.origin).where(LogOrigin.id == 1))
        stream = session.execute(tree_head_columns().execution_options(yield_per=STREAM))
        read = [read_tree_heads(stream, operator, origin)]
    heads: list[Signed] = []
    for signed, failure in read:
        for tree_size, _, at in signed:
            if tree_size > len(leaves):
                raise LedgerTampered(
                    len(leaves),
                    None,
                    f"a tree head signed at {at} covers {tree_size} entries, "
                    f"but only {len(leaves)} remain: entries were deleted",
                )
        if failure is not None:
            raise LedgerTampered(None, None, failure)
        heads += signed
    wanted: dict[int, list[Signed]] = {}
    for head in heads:
        wanted.setdefault(head[0], []).append(head)
    tree, built = TreeBuilder(), 0
    for size in sorted(wanted):
        while built < size:
            built = tree.append(leaves[built])
        root = tree.root().hex()
        for _, root_hash, at in wanted[size]:
            if root != root_hash:
                raise LedgerTampered(
                    size - 1 if size else None,
                    None,
                    f"the first {size} entries no longer have the root the tree head of "
                    f"{at} signed: history was rewritten",
                )
    while built < len(leaves):
        built = tree.append(leaves[built])
    return len(heads), tree.root()


# --- in parallel --------------------------------------------------------------

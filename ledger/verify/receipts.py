"""Check 7: every receipt a participant holds still agrees with the ledger."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.merkle import TreeBuilder, leaf_hash
from common.receipts import Receipt, ReceiptError
from ledger.verify.result import LedgerTampered

__all__ = ["check_receipts"]


def check_receipts(
    leaves: list[bytes],
    receipts: Sequence[tuple[str, Receipt]],
    operator: Ed25519PublicKey | None,
) -> int:
    """Check each receipt against the current tree (see item 7 of the module docstring).

    A receipt that does not verify on its own (signature, inclusion proof) is
    no evidence about the ledger: :class:`ReceiptError`, not tampering.
    """
    for source, receipt in receipts:
        try:
            if operator is not None:
                receipt.verify(operator)
            else:  # still check that the proof leads to the head it carries
                receipt.verify_proofs()
        except ReceiptError as err:
            raise ReceiptError(f"{source}: {err}") from None
    heads = {r.tree_head.tree_size for _, r in receipts if r.tree_head.tree_size <= len(leaves)}
    roots, tree = {}, TreeBuilder()
    for size in sorted(heads):
        while tree.size < size:
            tree.append(leaves[tree.size])
        roots[size] = tree.root().hex()
    ordered = sorted(receipts, key=lambda item: item[1].tree_head.tree_size)
    for source, receipt in ordered:  # first the entries the receipts name, then their trees
        size, who = receipt.tree_head.tree_size, f"{receipt.participant}'s receipt ({source})"
        if size > len(leaves):
            raise LedgerTampered(
                len(leaves),
                None,
                f"{who} was signed over {size} entries, but only {len(leaves)} remain: "
                "entries were deleted",
            )
        if leaves[receipt.seq] != leaf_hash(receipt.payload.encode("ascii")):
            raise LedgerTampered(
                receipt.seq,
                None,
                f"{who} proves another entry {receipt.seq} (round {receipt.round}) than the "
                "ledger now holds: it was rewritten",
            )
    for source, receipt in ordered:
        size, who = receipt.tree_head.tree_size, f"{receipt.participant}'s receipt ({source})"
        if roots[size] != receipt.tree_head.root:
            raise LedgerTampered(
                size - 1,
                None,
                f"the first {size} entries no longer have the root {who} was signed over: "
                "history was rewritten after the participant got its receipt",
            )
    return len(receipts)

"""What :func:`~ledger.verify.verify_ledger` reports: intact, or the first bad entry."""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.store import LedgerError

__all__ = ["LedgerTampered", "VerifyReport"]


class LedgerTampered(LedgerError):
    """The ledger does not verify; ``seq`` and ``kind`` name the first bad entry."""

    def __init__(self, seq: int | None, kind: str | None, detail: str) -> None:
        where = f"entry {seq}" + (f" ({kind})" if kind else "") if seq is not None else "ledger"
        super().__init__(f"{where}: {detail}")
        self.seq, self.kind, self.detail = seq, kind, detail


@dataclass(frozen=True)
class VerifyReport:
    """What an intact ledger holds."""

    entries: int
    tree_root: str
    chain_hash: str
    rows_checked: int
    rows_before_entries: int
    """Fact rows written before the ledger had entries (v4 and older); not covered."""
    tree_heads: int = 0
    """Signed tree heads checked against the entries."""
    signatures_checked: bool = False
    receipts: int = 0
    values_checked: int = 0
    """Contribution values recomputed from their rounds' coalition utilities."""
    witnesses: list[tuple[int, list[str]]] = field(default_factory=list)
    """Per signed head (tree size, in signing order), the participants whose cosignature
    on it verified."""

    @property
    def cosignatures(self) -> int:
        return sum(len(names) for _, names in self.witnesses)

    def witness_lines(self) -> list[str]:
        """One line per signed head: its size and who cosigned it."""
        return [
            f"tree head of size {size}: "
            + (f"cosigned by {', '.join(names)}" if names else "no cosignatures")
            for size, names in self.witnesses
        ]

    def summary(self) -> str:
        legacy = (
            f"; {self.rows_before_entries} older rows predate the entries"
            if self.rows_before_entries
            else ""
        )
        receipts = f", {self.receipts} receipts consistent" if self.receipts else ""
        if self.values_checked:
            receipts += f", {self.values_checked} contribution values recomputed"
        if self.cosignatures:
            receipts += f", {self.cosignatures} participant cosignatures verified"
        if not self.signatures_checked:
            return (
                f"consistent, signatures NOT checked: {self.entries} entries, "
                f"{self.rows_checked} fact rows match their entries, {self.tree_heads} tree "
                f"heads match the entries but their operator signatures were skipped"
                f"{receipts}, tree root {self.tree_root}{legacy}; give --operator-key to "
                "check the signatures"
            )
        return (
            f"intact: {self.entries} entries, {self.rows_checked} fact rows match their "
            f"entries, {self.tree_heads} signed tree heads (operator signatures verified)"
            f"{receipts}, tree root {self.tree_root}{legacy}"
        )

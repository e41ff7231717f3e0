"""Verify a ledger from its raw rows, read-only, and name the first bad entry.

Checks, in order:

1. the entries are numbered 0, 1, 2, ... without a gap;
2. each payload is canonical JSON and its RFC 6962 leaf hash is the stored one;
3. each ``prev_hash`` is the previous entry's ``chain_hash`` and each
   ``chain_hash`` is recomputed from it;
4. ``ledger_head`` agrees with the last entry;
5. every fact row equals the payload of the entry it names (so editing a
   typed table, such as a participant's public key, is caught), and every row
   an entry states still exists;
6. every signed checkpoint is well formed, covers no more entries than
   there are (a deleted tail is caught), has the RFC 6962 root of the first
   ``tree_size`` entries, and, given the operator's public key, carries the
   operator's signature.

Nothing is written: the checks only read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from common.merkle import TreeBuilder
from common.merkle import root as merkle_root
from server.ledger.checkpoints import Checkpoint, CheckpointError
from server.ledger.entries import (
    ZERO_HASH,
    canonical_payload,
    chain_hash,
    entry_leaf_hash,
    row_facts,
)
from server.ledger.schema import (
    Base,
    Charge,
    Dataset,
    Exclusion,
    LedgerCheckpoint,
    LedgerEntry,
    LedgerHead,
    Participant,
    Round,
    RoundUpdate,
    Run,
)
from server.ledger.store import Ledger, LedgerError

__all__ = ["LedgerTampered", "VerifyReport", "verify_ledger"]

FACT_TABLES: tuple[type[Base], ...] = (
    Participant,
    Dataset,
    Run,
    Round,
    RoundUpdate,
    Charge,
    Exclusion,
)


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
    checkpoints: int = 0
    signatures_checked: bool = False

    def summary(self) -> str:
        legacy = (
            f"; {self.rows_before_entries} older rows predate the entries"
            if self.rows_before_entries
            else ""
        )
        signed = (
            "operator signatures verified"
            if self.signatures_checked
            else "signatures NOT checked (no --operator-key)"
        )
        return (
            f"intact: {self.entries} entries, {self.rows_checked} fact rows match their "
            f"entries, {self.checkpoints} checkpoints ({signed}), tree root "
            f"{self.tree_root}{legacy}"
        )


def _check_entries(session: Session) -> tuple[list[bytes], dict[int, LedgerEntry], str]:
    leaves: list[bytes] = []
    entries: dict[int, LedgerEntry] = {}
    previous = ZERO_HASH
    for entry in session.scalars(select(LedgerEntry).order_by(LedgerEntry.seq)):
        expected = len(leaves)
        if entry.seq != expected:
            raise LedgerTampered(
                expected, None, f"missing: the next entry found is {entry.seq} ({entry.kind})"
            )
        try:
            doc = json.loads(entry.payload)
        except ValueError as err:
            raise LedgerTampered(entry.seq, entry.kind, f"payload is not JSON: {err}") from None
        if not isinstance(doc, dict) or canonical_payload(doc) != entry.payload:
            raise LedgerTampered(entry.seq, entry.kind, "payload is not canonical JSON")
        if doc.get("kind") != entry.kind:
            raise LedgerTampered(
                entry.seq,
                entry.kind,
                f"kind column says {entry.kind!r}, payload {doc.get('kind')!r}",
            )
        leaf = entry_leaf_hash(entry.payload)
        if leaf != entry.leaf_hash:
            raise LedgerTampered(entry.seq, entry.kind, "leaf hash does not match the payload")
        if entry.prev_hash != previous:
            raise LedgerTampered(
                entry.seq, entry.kind, "prev_hash is not the previous entry's chain hash"
            )
        if chain_hash(previous, leaf) != entry.chain_hash:
            raise LedgerTampered(entry.seq, entry.kind, "chain hash does not match")
        previous = entry.chain_hash
        leaves.append(bytes.fromhex(leaf))
        entries[entry.seq] = entry
    head = session.get(LedgerHead, 1)
    if head is None or head.size != len(leaves) or head.chain_hash != previous:
        raise LedgerTampered(
            None,
            None,
            f"the head says {head.size if head else 'nothing'} entries, the table holds "
            f"{len(leaves)}: entries were deleted or the head was edited",
        )
    return leaves, entries, previous


def _check_rows(session: Session, entries: dict[int, LedgerEntry]) -> tuple[int, int]:
    stated: dict[tuple[str, int], int] = {}  # (table, id) -> seq of an entry stating it
    for entry in entries.values():
        doc = json.loads(entry.payload)
        if isinstance(doc.get("table"), str) and isinstance(doc.get("id"), int):
            stated[(doc["table"], doc["id"])] = entry.seq
    checked = legacy = 0
    for table in FACT_TABLES:
        name = table.__tablename__
        for row in session.scalars(select(table)):
            key = (name, row.id)  # type: ignore[attr-defined]
            seq: int | None = row.entry_seq  # type: ignore[attr-defined]
            if seq is None:
                if key in stated:
                    entry = entries[stated[key]]
                    raise LedgerTampered(
                        entry.seq, entry.kind, f"{name} row {key[1]} lost its entry reference"
                    )
                legacy += 1
                continue
            entry_or_none = entries.get(seq)
            if entry_or_none is None:
                raise LedgerTampered(seq, None, f"{name} row {key[1]} names a missing entry")
            doc = json.loads(entry_or_none.payload)
            if (doc.get("table"), doc.get("id")) != key:
                raise LedgerTampered(
                    seq, entry_or_none.kind, f"{name} row {key[1]} names another row's entry"
                )
            if stated[key] != seq:
                raise LedgerTampered(
                    stated[key],
                    entries[stated[key]].kind,
                    f"{name} row {key[1]} names entry {seq}, not this later one",
                )
            if _plain_row(row) != doc.get("row"):
                changed = sorted(
                    k
                    for k, v in _plain_row(row).items()
                    if (doc.get("row") or {}).get(k, object()) != v
                )
                raise LedgerTampered(
                    seq,
                    entry_or_none.kind,
                    f"{name} row {key[1]} differs from its entry in {', '.join(changed) or 'keys'}",
                )
            checked += 1
    present = {
        (table.__tablename__, row_id)
        for table in FACT_TABLES
        for row_id in session.scalars(select(table.id))  # type: ignore[attr-defined]
    }
    for key, seq in sorted(stated.items(), key=lambda item: item[1]):
        if key not in present:
            raise LedgerTampered(seq, entries[seq].kind, f"{key[0]} row {key[1]} was deleted")
    return checked, legacy


def _check_checkpoints(
    session: Session, leaves: list[bytes], operator: Ed25519PublicKey | None
) -> int:
    rows = session.scalars(select(LedgerCheckpoint).order_by(LedgerCheckpoint.id)).all()
    checkpoints = []
    for row in rows:
        try:
            checkpoint = Checkpoint.from_row(row)
            if operator is not None:
                checkpoint.verify(operator)
        except CheckpointError as err:
            raise LedgerTampered(None, None, str(err)) from None
        if checkpoint.tree_size > len(leaves):
            raise LedgerTampered(
                len(leaves),
                None,
                f"a checkpoint signed at {checkpoint.at} covers {checkpoint.tree_size} entries, "
                f"but only {len(leaves)} remain: entries were deleted",
            )
        checkpoints.append(checkpoint)
    wanted: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        wanted.setdefault(checkpoint.tree_size, []).append(checkpoint)
    tree, built = TreeBuilder(), 0
    for size in sorted(wanted):
        while built < size:
            built = tree.append(leaves[built])
        for checkpoint in wanted[size]:
            if tree.root().hex() != checkpoint.root:
                raise LedgerTampered(
                    size - 1 if size else None,
                    None,
                    f"the first {size} entries no longer have the root the checkpoint of "
                    f"{checkpoint.at} signed: history was rewritten",
                )
    return len(checkpoints)


def _plain_row(row: Base) -> Any:
    return json.loads(canonical_payload(row_facts(row)))


def verify_ledger(ledger: Ledger, operator: Ed25519PublicKey | None = None) -> VerifyReport:
    """Check ``ledger`` (see the module docstring); :class:`LedgerTampered` names what failed.

    Parameters
    ----------
    ledger : Ledger
        The ledger, opened without migrating it.
    operator : Ed25519PublicKey, optional
        The operator's checkpoint key; without it signatures are not checked.
    """
    if not inspect(ledger.engine).has_table("ledger_entries"):
        raise LedgerError(
            f"{ledger.url} has no ledger_entries table: its schema predates v5 "
            "(opening it with any writing command migrates it)"
        )
    with Session(ledger.engine) as session:
        try:
            leaves, entries, last_chain = _check_entries(session)
            checked, legacy = _check_rows(session, entries)
            checkpoints = _check_checkpoints(session, leaves, operator)
        finally:
            session.rollback()  # read-only: nothing to keep
    return VerifyReport(
        entries=len(leaves),
        tree_root=merkle_root(leaves).hex(),
        chain_hash=last_chain,
        rows_checked=checked,
        rows_before_entries=legacy,
        checkpoints=checkpoints,
        signatures_checked=operator is not None,
    )

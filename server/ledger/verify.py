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
   operator's signature;
7. every receipt a participant holds (given with ``receipts``) still agrees
   with the ledger: its entry is the ledger's entry at that position, and
   the first ``tree_size`` entries of the current tree still have the root
   it was signed over (the receipt's head is consistent with the current
   one), so a deleted tail or a rewritten history is caught even when the
   operator also removed the checkpoints it had stored.

Nothing is written: the checks only read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from common.canonical import canonical_json
from common.merkle import TreeBuilder, leaf_hash
from common.merkle import root as merkle_root
from common.receipts import Receipt, ReceiptError
from server.ledger.checkpoints import Checkpoint, CheckpointError, checkpoint_from_row
from server.ledger.entries import (
    ZERO_HASH,
    canonical_payload,
    chain_hash,
    column_facts,
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
    Release,
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
    Release,
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
    receipts: int = 0

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
        receipts = f", {self.receipts} receipts consistent" if self.receipts else ""
        return (
            f"intact: {self.entries} entries, {self.rows_checked} fact rows match their "
            f"entries, {self.checkpoints} checkpoints ({signed}){receipts}, tree root "
            f"{self.tree_root}{legacy}"
        )


_STREAM = 10_000
"""Rows fetched at a time while streaming entries and fact rows."""


class _FloatInPayload(Exception):
    """Raised while parsing a payload that holds a float: a canonical payload never does."""


def _refuse_float(_: str) -> Any:
    raise _FloatInPayload


# Parses a payload, stopping at any float or NaN/Infinity literal (see _parse_payload).
_PAYLOAD_DECODER = json.JSONDecoder(parse_float=_refuse_float, parse_constant=_refuse_float)


def _parse_payload(payload: str) -> tuple[Any, bool]:
    """Parse ``payload`` once; return the document and whether the payload is canonical.

    A payload is canonical when it is exactly ``canonical_payload`` of the
    object it parses to. A document without floats is left as it is by
    ``canonical_payload``, so plain :func:`~common.canonical.canonical_json`
    of it decides, and skips the float-rewriting walk; a payload with a
    float (never canonical) or that does not parse is parsed again with
    :func:`json.loads` and compared as before, so the errors are the same.
    Raises :class:`ValueError` if it is not JSON.
    """
    try:
        doc = _PAYLOAD_DECODER.decode(payload)
    except (_FloatInPayload, ValueError):  # parsed again as before: same document, same error
        doc = json.loads(payload)
        return doc, isinstance(doc, dict) and canonical_payload(doc) == payload
    return doc, isinstance(doc, dict) and canonical_json(doc).decode("ascii") == payload


def _stated_row_text(payload: str, doc: dict[str, Any]) -> str:
    """The canonical JSON of ``doc.get("row")``, ``payload`` being ``doc``'s canonical text.

    For a document as ``record_row`` writes it (the keys ``at``, ``id``,
    ``kind``, ``row``, ``table``; an int id, the rest text) the payload reads
    ``{"at":A,"id":I,"kind":K,"row":R,"table":T}``, and ``R`` is exactly the
    canonical JSON of the row. A JSON string never holds ``,"`` (its quotes
    are escaped), so the first ``,"row":`` and the last ``,"table":`` are the
    ones around ``R``: it is sliced out instead of being encoded again. Any
    other document is encoded (it holds no floats: its payload is canonical).
    """
    if (
        len(doc) == 5
        and type(doc.get("id")) is int
        and type(doc.get("table")) is str
        and type(doc.get("kind")) is str
        and type(doc.get("at")) is str
        and "row" in doc
    ):
        return payload[payload.index(',"row":') + 7 : payload.rindex(',"table":')]
    return canonical_json(doc.get("row")).decode("ascii")


def _row_text(facts: dict[str, Any]) -> str:
    """``canonical_payload(facts)``, faster for the flat rows of the fact tables.

    A float is written as ``repr`` (which is also "inf", "-inf", "nan"),
    exactly as :func:`~common.canonical.canonical_json` writes it; anything
    but text, integers, booleans, None and floats takes ``canonical_payload``.
    """
    plain: dict[str, Any] = {}
    for key, value in facts.items():
        if type(value) is float:
            plain[key] = repr(value)
        elif value is None or isinstance(value, (str, int)):
            plain[key] = value
        else:
            return canonical_payload(facts)
    return canonical_json(plain).decode("ascii")


@dataclass
class _Entries:
    """What :func:`_check_rows` needs of the verified entries, by seq (0 to n - 1).

    The payloads are not kept: per entry, its kind, the ``(table, id)`` its
    payload names and the SHA-256 of the canonical JSON of its ``row``.
    """

    kinds: list[str] = field(default_factory=list)
    keys: list[tuple[Any, Any]] = field(default_factory=list)
    row_digests: list[bytes | None] = field(default_factory=list)
    stated: dict[tuple[str, int], int] = field(default_factory=dict)
    """(table, id) -> seq of the last entry stating that row."""

    def __len__(self) -> int:
        return len(self.kinds)


def _check_entries(session: Session) -> tuple[list[bytes], _Entries, str]:
    leaves: list[bytes] = []
    entries = _Entries()
    previous = ZERO_HASH
    names: dict[Any, Any] = {}  # one str object per kind and table name, not one per entry
    rows = session.execute(
        select(
            LedgerEntry.seq,
            LedgerEntry.kind,
            LedgerEntry.payload,
            LedgerEntry.leaf_hash,
            LedgerEntry.prev_hash,
            LedgerEntry.chain_hash,
        )
        .order_by(LedgerEntry.seq)
        .execution_options(yield_per=_STREAM)
    )
    for seq, kind, payload, stored_leaf, prev_hash, stored_chain in rows:
        expected = len(leaves)
        if seq != expected:
            raise LedgerTampered(expected, None, f"missing: the next entry found is {seq} ({kind})")
        try:
            doc, canonical = _parse_payload(payload)
        except ValueError as err:
            raise LedgerTampered(seq, kind, f"payload is not JSON: {err}") from None
        if not canonical:
            raise LedgerTampered(seq, kind, "payload is not canonical JSON")
        if doc.get("kind") != kind:
            raise LedgerTampered(
                seq, kind, f"kind column says {kind!r}, payload {doc.get('kind')!r}"
            )
        leaf = entry_leaf_hash(payload)
        if leaf != stored_leaf:
            raise LedgerTampered(seq, kind, "leaf hash does not match the payload")
        if prev_hash != previous:
            raise LedgerTampered(seq, kind, "prev_hash is not the previous entry's chain hash")
        if chain_hash(previous, leaf) != stored_chain:
            raise LedgerTampered(seq, kind, "chain hash does not match")
        previous = stored_chain
        leaves.append(bytes.fromhex(leaf))
        table, row_id = doc.get("table"), doc.get("id")
        key = (names.setdefault(table, table) if isinstance(table, str) else table, row_id)
        entries.kinds.append(names.setdefault(kind, kind))
        entries.keys.append(key)
        if isinstance(table, str) and isinstance(row_id, int):
            entries.stated[key] = seq
            row_text = _stated_row_text(payload, doc)
            entries.row_digests.append(hashlib.sha256(row_text.encode("ascii")).digest())
        else:
            entries.row_digests.append(None)  # names no row: no row can match it
    head = session.get(LedgerHead, 1)
    if head is None or head.size != len(leaves) or head.chain_hash != previous:
        raise LedgerTampered(
            None,
            None,
            f"the head says {head.size if head else 'nothing'} entries, the table holds "
            f"{len(leaves)}: entries were deleted or the head was edited",
        )
    return leaves, entries, previous


def _check_rows(session: Session, entries: _Entries) -> tuple[int, int]:
    stated = entries.stated  # (table, id) -> seq of the last entry stating it
    checked = legacy = 0
    present: set[tuple[str, int]] = set()
    for table in FACT_TABLES:
        name = table.__tablename__
        columns = list(inspect(table).columns)  # the columns row_facts reads, by key
        keys = [column.key for column in columns]
        id_at, seq_at = keys.index("id"), keys.index("entry_seq")
        for values in session.execute(select(*columns).execution_options(yield_per=_STREAM)):
            key = (name, values[id_at])
            present.add(key)
            seq: int | None = values[seq_at]
            if seq is None:
                if key in stated:
                    raise LedgerTampered(
                        stated[key],
                        entries.kinds[stated[key]],
                        f"{name} row {key[1]} lost its entry reference",
                    )
                legacy += 1
                continue
            if not 0 <= seq < len(entries):
                raise LedgerTampered(seq, None, f"{name} row {key[1]} names a missing entry")
            if entries.keys[seq] != key:
                raise LedgerTampered(
                    seq, entries.kinds[seq], f"{name} row {key[1]} names another row's entry"
                )
            if stated[key] != seq:
                raise LedgerTampered(
                    stated[key],
                    entries.kinds[stated[key]],
                    f"{name} row {key[1]} names entry {seq}, not this later one",
                )
            facts = _row_text(column_facts(zip(keys, values, strict=True)))
            if hashlib.sha256(facts.encode("ascii")).digest() != entries.row_digests[seq]:
                _compare_row(session, name, key[1], seq, entries.kinds[seq], facts)
            checked += 1
    deleted = [(seq, key) for key, seq in stated.items() if key not in present]
    if deleted:
        seq, key = min(deleted)
        raise LedgerTampered(seq, entries.kinds[seq], f"{key[0]} row {key[1]} was deleted")
    return checked, legacy


def _compare_row(session: Session, name: str, row_id: int, seq: int, kind: str, facts: str) -> None:
    """Compare a row with its entry's ``row`` as parsed JSON; raise if they differ.

    Reached only when the canonical texts differ, which for the JSON a row
    and an entry can hold means the row was changed; the entry is read again
    (entries are append-only) so the comparison and message are the full ones.
    """
    doc = json.loads(
        session.scalars(select(LedgerEntry.payload).where(LedgerEntry.seq == seq)).one()
    )
    plain = json.loads(facts)
    if plain != doc.get("row"):
        changed = sorted(
            k for k, v in plain.items() if (doc.get("row") or {}).get(k, object()) != v
        )
        raise LedgerTampered(
            seq,
            kind,
            f"{name} row {row_id} differs from its entry in {', '.join(changed) or 'keys'}",
        )


def _check_checkpoints(
    session: Session, leaves: list[bytes], operator: Ed25519PublicKey | None
) -> int:
    rows = session.scalars(select(LedgerCheckpoint).order_by(LedgerCheckpoint.id)).all()
    checkpoints = []
    for row in rows:
        try:
            checkpoint = checkpoint_from_row(row)
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


def _check_receipts(
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
    heads = {r.checkpoint.tree_size for _, r in receipts if r.checkpoint.tree_size <= len(leaves)}
    roots, tree = {}, TreeBuilder()
    for size in sorted(heads):
        while tree.size < size:
            tree.append(leaves[tree.size])
        roots[size] = tree.root().hex()
    ordered = sorted(receipts, key=lambda item: item[1].checkpoint.tree_size)
    for source, receipt in ordered:  # first the entries the receipts name, then their trees
        size, who = receipt.checkpoint.tree_size, f"{receipt.participant}'s receipt ({source})"
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
        size, who = receipt.checkpoint.tree_size, f"{receipt.participant}'s receipt ({source})"
        if roots[size] != receipt.checkpoint.root:
            raise LedgerTampered(
                size - 1,
                None,
                f"the first {size} entries no longer have the root {who} was signed over: "
                "history was rewritten after the participant got its receipt",
            )
    return len(receipts)


def _plain_row(row: Base) -> Any:
    return json.loads(canonical_payload(row_facts(row)))


def verify_ledger(
    ledger: Ledger,
    operator: Ed25519PublicKey | None = None,
    receipts: Sequence[tuple[str, Receipt]] = (),
) -> VerifyReport:
    """Check ``ledger`` (see the module docstring); :class:`LedgerTampered` names what failed.

    Parameters
    ----------
    ledger : Ledger
        The ledger, opened without migrating it.
    operator : Ed25519PublicKey, optional
        The operator's checkpoint key; without it signatures are not checked.
    receipts : sequence of (source, Receipt)
        Receipts participants hold (:func:`common.receipts.read_receipts`);
        each must agree with the current tree.

    Raises
    ------
    LedgerTampered
        The first check that fails, naming the entry.
    ReceiptError
        A receipt does not verify on its own (so it proves nothing).
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
            checked_receipts = _check_receipts(leaves, receipts, operator)
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
        receipts=checked_receipts,
    )

"""Appending facts to the hash-chained, append-only ``ledger_entries``.

Every fact row (a participant, a dataset, a run, a round, an update, a
privacy charge, an exclusion) is recorded with :func:`record_row`: the row
is flushed, its columns become the canonical JSON payload of a new entry,
and the row keeps that entry's ``seq``. A row that changes later (a run that
finishes, a participant that is admitted) gets a new entry and points at
it, so every row always equals the payload of the entry it names, which is
what :mod:`ledger.verify` checks.

Canonical JSON: sorted keys, no spaces, ASCII, and no floats: a float is
written as the string of its shortest round-tripping decimal form
(``repr``), so every backend and language reads back the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, inspect, update
from sqlalchemy.orm import Session

from common.canonical import canonical_json
from ledger.schema import Base, ChainTip, LedgerEntry, utcnow

__all__ = [
    "ZERO_HASH",
    "append_entries",
    "append_entry",
    "canonical_payload",
    "chain_hash",
    "column_facts",
    "entry_leaf_hash",
    "record_row",
    "row_facts",
]

ZERO_HASH = "0" * 64
"""``prev_hash`` of the first entry."""

SKIPPED_COLUMNS = frozenset({"id", "entry_seq"})
"""Columns a row's payload leaves out: its key (named apart) and its entry reference."""


def canonical_payload(doc: dict[str, Any]) -> str:
    """``doc`` as a ledger payload: canonical JSON text without floats."""
    return canonical_json(doc, floats_as_strings=True).decode("ascii")


def entry_leaf_hash(payload: str) -> str:
    """RFC 6962 leaf hash of a payload: SHA-256(0x00 ‖ payload), hex."""
    return hashlib.sha256(b"\x00" + payload.encode("ascii")).hexdigest()


def chain_hash(prev_hash: str, leaf_hash: str) -> str:
    """SHA-256(prev ‖ leaf) over the raw digests, hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + bytes.fromhex(leaf_hash)).hexdigest()


def column_facts(columns: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The facts among a row's ``(column key, value)`` pairs (see :func:`row_facts`).

    Shared by :func:`row_facts` (an ORM object) and the verifier, which reads
    the same columns as plain result rows.
    """
    return {
        key: value
        for key, value in columns
        if key not in SKIPPED_COLUMNS and not isinstance(value, datetime)
    }


def row_facts(row: Base) -> dict[str, Any]:
    """The facts a row states: every column but its key, entry reference and timestamps.

    Timestamps are left out because SQLite does not keep their time zone;
    the entry's own ``at`` records when the fact was written.
    """
    return column_facts(
        (column.key, getattr(row, column.key)) for column in inspect(type(row)).columns
    )


def _entry_values(seq: int, kind: str, doc: dict[str, Any], prev: str) -> dict[str, Any]:
    """The columns of entry ``seq`` stating ``doc``, chained after ``prev``, written now."""
    at = utcnow()
    payload = canonical_payload({**doc, "kind": kind, "at": at.isoformat(timespec="microseconds")})
    leaf = entry_leaf_hash(payload)
    return {
        "seq": seq,
        "kind": kind,
        "payload": payload,
        "leaf_hash": leaf,
        "prev_hash": prev,
        "chain_hash": chain_hash(prev, leaf),
        "created_at": at,
    }


def append_entries(session: Session, items: Sequence[tuple[str, dict[str, Any]]]) -> list[int]:
    """Append entries, serialised with every other writer through the chain tip (``ledger_head``).

    The chain tip is locked (``UPDATE … RETURNING``) once for the whole batch,
    each entry chains on the one before, and the rows go in with one INSERT,
    which the append-only triggers check like any other; no ORM objects are
    created for them. Returns the entries' seqs, in the order of ``items``.

    Parameters
    ----------
    session : Session
        The caller's transaction; the chain tip stays locked until it ends.
    items : Sequence[tuple[str, dict]]
        ``(kind, doc)`` pairs, in the order they are to be appended.

    Returns
    -------
    list[int]
        The seq of each entry, in the order of ``items``.
    """
    if not items:
        return []
    # Core statements on the session's connection (its transaction): the ORM's
    # bulk-statement handling, which has no objects to synchronise here, cost
    # most of a single append.
    connection = session.connection()
    size, prev = connection.execute(
        update(ChainTip)
        .where(ChainTip.id == 1)
        .values(size=ChainTip.size + len(items))
        .returning(ChainTip.size, ChainTip.chain_hash)
    ).one()
    first = size - len(items)
    rows = []
    for seq, (kind, doc) in enumerate(items, start=first):
        rows.append(_entry_values(seq, kind, doc, prev))
        prev = rows[-1]["chain_hash"]
    connection.execute(insert(LedgerEntry), rows)
    connection.execute(update(ChainTip).where(ChainTip.id == 1).values(chain_hash=prev))
    return list(range(first, size))


def append_entry(session: Session, kind: str, doc: dict[str, Any]) -> int:
    """Append one entry (:func:`append_entries` of one); return its seq."""
    (seq,) = append_entries(session, [(kind, doc)])
    return seq


def record_row(session: Session, row: Base, kind: str) -> int:
    """Flush ``row`` and append the entry that states it; return its seq, which the row names."""
    if row not in session:
        session.add(row)
    session.flush()
    table = type(row).__tablename__
    seq = append_entry(
        session,
        kind,
        {"table": table, "id": row.id, "row": row_facts(row)},  # type: ignore[attr-defined]
    )
    row.entry_seq = seq  # type: ignore[attr-defined]
    session.flush()
    return seq

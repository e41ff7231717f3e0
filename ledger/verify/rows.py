"""Check 5: every fact row equals the payload of the entry it names, and none was deleted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from common.canonical import canonical_json
from ledger.entries import SKIPPED_COLUMNS, canonical_payload, column_facts
from ledger.schema import (
    Base,
    Charge,
    Contribution,
    Dataset,
    Defence,
    Exclusion,
    FlowerRun,
    LedgerEntry,
    Participant,
    Release,
    Round,
    RoundUpdate,
    Run,
    Suspension,
    Valuation,
)
from ledger.verify.entries import STREAM, Entries
from ledger.verify.result import LedgerTampered

__all__ = ["FACT_TABLES", "Row", "check_rows", "table_columns", "values_text"]

FACT_TABLES: tuple[type[Base], ...] = (
    Participant,
    Dataset,
    Run,
    Round,
    RoundUpdate,
    Charge,
    Exclusion,
    Release,
    FlowerRun,
    Defence,
    Valuation,
    Contribution,
    Suspension,
)

Row = tuple[Any, int | None, bytes | None]
"""A fact row as a worker read it: its id, ``entry_seq`` and the SHA-256 of its canonical text."""


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


def _check_row(
    session: Session,
    entries: Entries,
    name: str,
    key: tuple[str, int],
    seq: int | None,
    digest: bytes | None,
    facts: Callable[[], str],
) -> bool:
    """Check one fact row against its entry; return whether it predates the entries.

    ``digest`` is the SHA-256 of the row's canonical text, or ``None`` if it
    was not computed; ``facts()`` gives that text when it is needed.
    """
    stated = entries.stated
    if seq is None:
        if key in stated:
            raise LedgerTampered(
                stated[key],
                entries.kinds[stated[key]],
                f"{name} row {key[1]} lost its entry reference",
            )
        return True
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
    if digest is None or digest != entries.row_digests[seq]:
        text = facts()
        if hashlib.sha256(text.encode("ascii")).digest() != entries.row_digests[seq]:
            _compare_row(session, name, key[1], seq, entries.kinds[seq], text)
    return False


def table_columns(table: type[Base]) -> tuple[list[Any], list[str], int, int]:
    columns = list(inspect(table).columns)  # the columns row_facts reads, by key
    keys = [column.key for column in columns]
    return columns, keys, keys.index("id"), keys.index("entry_seq")


def values_text(keys: list[str], values: Sequence[Any]) -> str:
    """The canonical text of a fact row read as ``values`` of the columns ``keys``.

    ``_row_text(column_facts(...))`` in one loop for the usual values (exact
    text, integers, booleans, floats, None, timestamps); any other goes through them.
    """
    plain: dict[str, Any] = {}
    for key, value in zip(keys, values, strict=True):
        kind = type(value)
        if key in SKIPPED_COLUMNS:
            continue
        if kind is str or kind is int or kind is bool or value is None:
            plain[key] = value
        elif kind is float:
            plain[key] = repr(value)
        elif not isinstance(value, datetime):
            return _row_text(column_facts(zip(keys, values, strict=True)))
    return canonical_json(plain).decode("ascii")


def _read_row_text(
    session: Session, columns: list[Any], keys: list[str], id_at: int, row_id: Any
) -> str:
    """Read the fact row ``row_id`` again and give its canonical text."""
    values = session.execute(select(*columns).where(columns[id_at] == row_id)).one()
    return values_text(keys, values)


def check_rows(
    session: Session, entries: Entries, parts: Sequence[Sequence[Future[list[Row]]]] = ()
) -> tuple[int, int]:
    """Check every fact row against its entry; ``parts``, the workers' id ranges per table."""
    stated = entries.stated  # (table, id) -> seq of the last entry stating it
    checked = legacy = 0
    present: set[tuple[str, int]] = set()
    merged = merge_rows(parts) if parts else None
    for index, table in enumerate(FACT_TABLES):
        name = table.__tablename__
        columns, keys, id_at, seq_at = table_columns(table)
        if merged is not None:
            named, digests, size = entries.keys, entries.row_digests, len(entries)
            for row_id, seq, digest in merged[index]:
                key = (name, row_id)
                present.add(key)
                if (  # the usual case, as _check_row decides it
                    digest is not None
                    and seq is not None
                    and 0 <= seq < size
                    and named[seq] == key
                    and stated[key] == seq
                    and digest == digests[seq]
                ):
                    checked += 1
                    continue
                facts = partial(_read_row_text, session, columns, keys, id_at, row_id)
                if _check_row(session, entries, name, key, seq, digest, facts):
                    legacy += 1
                else:
                    checked += 1
            continue
        for values in session.execute(select(*columns).execution_options(yield_per=STREAM)):
            key = (name, values[id_at])
            present.add(key)
            row_seq: int | None = values[seq_at]
            facts = partial(values_text, keys, values)
            if _check_row(session, entries, name, key, row_seq, None, facts):
                legacy += 1
            else:
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


def merge_rows(parts: Sequence[Sequence[Future[list[Row]]]]) -> list[list[Row]]:
    """Each fact table's rows as the workers read them, by id."""
    return [[row for task in tasks for row in task.result()] for tasks in parts]

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

From :data:`PARALLEL_FROM` entries on, checks 2, 3, 5 (reading and hashing
the fact rows) and 6 (body and signature of each checkpoint) run in worker
processes over seq or id ranges, each on its own connection; the parent
joins their results in order and makes every comparison that spans ranges,
so the error raised is the one a single pass raises.
"""

from __future__ import annotations

import gc
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine, create_engine, func, inspect, select
from sqlalchemy.orm import Session

from common.canonical import canonical_json
from common.merkle import TreeBuilder, leaf_hash
from common.receipts import Receipt, ReceiptError
from server.ledger.checkpoints import CheckpointError, checkpoint_from_columns
from server.ledger.entries import (
    SKIPPED_COLUMNS,
    ZERO_HASH,
    canonical_payload,
    chain_hash,
    column_facts,
    entry_leaf_hash,
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


@dataclass
class _EntriesPart(_Entries):
    """The entries of one seq range ``[first, ...)``, as a worker checked them."""

    first: int = 0
    leaves: list[bytes] = field(default_factory=list)
    last_chain: str = ZERO_HASH
    """The stored chain hash of the last entry read (of the entry before, if none)."""
    failure: tuple[int | None, str | None, str] | None = None
    """``(seq, kind, detail)`` of the first bad entry of the range, if any."""


def _entry_columns() -> Any:
    return select(
        LedgerEntry.seq,
        LedgerEntry.kind,
        LedgerEntry.payload,
        LedgerEntry.leaf_hash,
        LedgerEntry.prev_hash,
        LedgerEntry.chain_hash,
    )


def _scan_entries(rows: Iterable[Any], part: _EntriesPart) -> None:
    """Check entries read in seq order from ``part.first``, appending to ``part``.

    ``part.last_chain`` starts as the chain hash of the entry before
    ``part.first``. Raises :class:`LedgerTampered` at the first bad entry.
    """
    leaves, kinds, keys, digests = part.leaves, part.kinds, part.keys, part.row_digests
    stated = part.stated
    previous = part.last_chain
    expected = part.first
    names: dict[Any, Any] = {}  # one str object per kind and table name, not one per entry
    sha256 = hashlib.sha256
    fromhex = bytes.fromhex
    for seq, kind, payload, stored_leaf, prev_hash, stored_chain in rows:
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
        previous = part.last_chain = stored_chain
        expected += 1
        leaves.append(fromhex(leaf))
        table, row_id = doc.get("table"), doc.get("id")
        key = (names.setdefault(table, table) if isinstance(table, str) else table, row_id)
        kinds.append(names.setdefault(kind, kind))
        keys.append(key)
        if isinstance(table, str) and isinstance(row_id, int):
            stated[key] = seq
            row_text = _stated_row_text(payload, doc)
            digests.append(sha256(row_text.encode("ascii")).digest())
        else:
            digests.append(None)  # names no row: no row can match it


def _check_head(session: Session, size: int, last_chain: str) -> None:
    head = session.get(LedgerHead, 1)
    if head is None or head.size != size or head.chain_hash != last_chain:
        raise LedgerTampered(
            None,
            None,
            f"the head says {head.size if head else 'nothing'} entries, the table holds "
            f"{size}: entries were deleted or the head was edited",
        )


def _check_entries(
    session: Session, parallel: _Parallel | None = None
) -> tuple[list[bytes], _Entries, str]:
    if parallel is not None:
        merged = _merge_entries(parallel)
        if merged is not None:
            _check_head(session, len(merged[0]), merged[2])
            return merged
        # the entries changed under the workers: check them again here, in one pass
    part = _EntriesPart()
    rows = session.execute(
        _entry_columns().order_by(LedgerEntry.seq).execution_options(yield_per=_STREAM)
    )
    _scan_entries(rows, part)
    _check_head(session, len(part.leaves), part.last_chain)
    entries = _Entries(part.kinds, part.keys, part.row_digests, part.stated)
    return part.leaves, entries, part.last_chain


def _merge_entries(parallel: _Parallel) -> tuple[list[bytes], _Entries, str] | None:
    """The workers' ranges joined in seq order; ``None`` if they miss entries.

    Each range reports its own first bad entry; the ranges before it being
    intact, the first range with one names the ledger's first bad entry.
    """
    leaves: list[bytes] = []
    entries = _Entries()
    last_chain = ZERO_HASH
    for future in parallel.entries:
        part = future.result()
        if part.first != len(leaves):  # a gap: named by a pass over all the entries
            return None
        if part.failure is not None:
            raise LedgerTampered(*part.failure)
        leaves += part.leaves
        entries.kinds += part.kinds
        entries.keys += part.keys
        entries.row_digests += part.row_digests
        entries.stated.update(part.stated)  # later ranges win: the last entry stating a row
        last_chain = part.last_chain
    if len(leaves) != parallel.size:
        return None
    return leaves, entries, last_chain


def _check_row(
    session: Session,
    entries: _Entries,
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


def _table_columns(table: type[Base]) -> tuple[list[Any], list[str], int, int]:
    columns = list(inspect(table).columns)  # the columns row_facts reads, by key
    keys = [column.key for column in columns]
    return columns, keys, keys.index("id"), keys.index("entry_seq")


def _values_text(keys: list[str], values: Sequence[Any]) -> str:
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
    return _values_text(keys, values)


def _check_rows(
    session: Session, entries: _Entries, parallel: _Parallel | None = None
) -> tuple[int, int]:
    stated = entries.stated  # (table, id) -> seq of the last entry stating it
    checked = legacy = 0
    present: set[tuple[str, int]] = set()
    merged = _merge_rows(parallel) if parallel is not None else None
    for index, table in enumerate(FACT_TABLES):
        name = table.__tablename__
        columns, keys, id_at, seq_at = _table_columns(table)
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
        for values in session.execute(select(*columns).execution_options(yield_per=_STREAM)):
            key = (name, values[id_at])
            present.add(key)
            row_seq: int | None = values[seq_at]
            facts = partial(_values_text, keys, values)
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


_Signed = tuple[int, str, str]
"""What the tree checks need of a well-formed checkpoint: its tree size, root and time."""


def _checkpoint_columns() -> Any:
    return select(
        LedgerCheckpoint.id,
        LedgerCheckpoint.tree_size,
        LedgerCheckpoint.root_hash,
        LedgerCheckpoint.body,
        LedgerCheckpoint.key_id,
        LedgerCheckpoint.signature,
    ).order_by(LedgerCheckpoint.id)


def _read_checkpoints(
    rows: Iterable[Any], operator: Ed25519PublicKey | None
) -> tuple[list[_Signed], str | None]:
    """Check each stored checkpoint on its own, in id order; stop at the first that fails.

    Returns
    -------
    list of (tree_size, root, at)
        The checkpoints that passed, before the first that failed.
    str or None
        The :class:`CheckpointError` message of the first that failed.
    """
    signed: list[_Signed] = []
    for row in rows:
        try:
            checkpoint = checkpoint_from_columns(*row)
            if operator is not None:
                checkpoint.verify(operator)
        except CheckpointError as err:
            return signed, str(err)
        signed.append((checkpoint.tree_size, checkpoint.root, checkpoint.at))
    return signed, None


def _check_checkpoints(
    session: Session,
    leaves: list[bytes],
    operator: Ed25519PublicKey | None,
    parallel: _Parallel | None = None,
) -> tuple[int, bytes]:
    """Check the stored checkpoints against ``leaves``; return their count and the tree root.

    The root of all ``leaves`` comes from the same pass that gives each
    checkpoint's root.
    """
    parts = []
    if parallel is not None:
        parts = [future.result() for future in parallel.checkpoints]
    if not parts:
        stream = session.execute(_checkpoint_columns().execution_options(yield_per=_STREAM))
        parts = [_read_checkpoints(stream, operator)]
    checkpoints: list[_Signed] = []
    for signed, failure in parts:
        for tree_size, _, at in signed:
            if tree_size > len(leaves):
                raise LedgerTampered(
                    len(leaves),
                    None,
                    f"a checkpoint signed at {at} covers {tree_size} entries, "
                    f"but only {len(leaves)} remain: entries were deleted",
                )
        if failure is not None:
            raise LedgerTampered(None, None, failure)
        checkpoints += signed
    wanted: dict[int, list[_Signed]] = {}
    for checkpoint in checkpoints:
        wanted.setdefault(checkpoint[0], []).append(checkpoint)
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
                    f"the first {size} entries no longer have the root the checkpoint of "
                    f"{at} signed: history was rewritten",
                )
    while built < len(leaves):
        built = tree.append(leaves[built])
    return len(checkpoints), tree.root()


# --- in parallel --------------------------------------------------------------

PARALLEL_FROM = 50_000
"""Entries from which :func:`verify_ledger` spreads its checks over worker processes."""

_PART = 50_000
"""Most entries (or fact-row ids) one worker task checks."""

_CHECKPOINT_PART = 10_000
"""Most checkpoints one worker task checks."""

_WORKER_ENGINES: dict[str, Engine] = {}
"""Each worker process's engine, by ledger URL (opened on its first task)."""


def _worker_start() -> None:
    """Start a worker process: no cyclic garbage collection.

    A task makes hundreds of thousands of small objects that reference
    counting frees; the collector's passes over them only cost time, and
    the process ends with the verification.
    """
    gc.disable()


def _worker_engine(url: str) -> Engine:
    engine = _WORKER_ENGINES.get(url)
    if engine is None:
        engine = _WORKER_ENGINES[url] = create_engine(url)
    return engine


def _entries_part(url: str, first: int, end: int) -> _EntriesPart:
    """In a worker: check the entries ``first`` to ``end - 1`` (see :func:`_scan_entries`).

    The range starts from the stored chain hash of the entry before it; if
    that entry is bad, the range before this one names it.
    """
    part = _EntriesPart(first=first)
    with _worker_engine(url).connect() as connection:
        if first:
            before = select(LedgerEntry.chain_hash).where(LedgerEntry.seq == first - 1)
            last_chain = connection.execute(before).scalar_one_or_none()
            if last_chain is None:  # a gap before the range: the parent checks again alone
                return part
            part.last_chain = last_chain
        rows = connection.execute(
            _entry_columns()
            .where(LedgerEntry.seq >= first, LedgerEntry.seq < end)
            .order_by(LedgerEntry.seq)
            .execution_options(yield_per=_STREAM)
        )
        try:
            _scan_entries(rows, part)
        except LedgerTampered as err:
            part.failure = (err.seq, err.kind, err.detail)
    return part


_Row = tuple[Any, int | None, bytes | None]
"""A fact row as a worker read it: its id, ``entry_seq`` and the SHA-256 of its canonical text."""


def _rows_part(url: str, index: int, first: int, end: int) -> list[_Row]:
    """In a worker: the rows of ``FACT_TABLES[index]`` with ids ``first`` to ``end - 1``.

    A row's digest is ``None`` where its text could not be made here; the
    parent then makes it again, so that it fails there as it would alone.
    """
    columns, keys, id_at, seq_at = _table_columns(FACT_TABLES[index])
    ident = columns[id_at]
    found: list[_Row] = []
    with _worker_engine(url).connect() as connection:
        rows = connection.execute(
            select(*columns)
            .where(ident >= first, ident < end)
            .order_by(ident)
            .execution_options(yield_per=_STREAM)
        )
        for values in rows:
            seq = values[seq_at]
            digest = None
            if seq is not None:
                try:
                    text = _values_text(keys, values)
                    digest = hashlib.sha256(text.encode("ascii")).digest()
                except Exception:  # made again, and raised, in the parent
                    digest = None
            found.append((values[id_at], seq, digest))
    return found


def _checkpoints_part(
    url: str, first: int, end: int, operator_raw: bytes | None
) -> tuple[list[_Signed], str | None]:
    """In a worker: :func:`_read_checkpoints` of the checkpoints ``first`` to ``end - 1`` (ids)."""
    operator = None if operator_raw is None else Ed25519PublicKey.from_public_bytes(operator_raw)
    with _worker_engine(url).connect() as connection:
        rows = connection.execute(
            _checkpoint_columns()
            .where(LedgerCheckpoint.id >= first, LedgerCheckpoint.id < end)
            .execution_options(yield_per=_STREAM)
        )
        return _read_checkpoints(rows, operator)


@dataclass
class _Parallel:
    """The worker tasks of one verification, submitted at once, in the order they are needed."""

    pool: ProcessPoolExecutor
    size: int
    """Entries the workers were given (0 to size - 1)."""
    entries: list[Future[_EntriesPart]]
    rows: list[list[Future[list[_Row]]]]
    """Per fact table, the tasks over its id ranges."""
    checkpoints: list[Future[tuple[list[_Signed], str | None]]]


def _ranges(low: int, high: int, workers: int, most: int) -> list[tuple[int, int]]:
    """Split ``[low, high]`` into about ``4 * workers`` ranges of at most ``most``."""
    span = high - low + 1
    step = max(1, min(most, -(-span // (4 * workers))))
    return [(start, min(start + step, high + 1)) for start in range(low, high + 1, step)]


def _start_parallel(
    session: Session,
    ledger: Ledger,
    operator: Ed25519PublicKey | None,
    workers: int | None,
    parallel_from: int,
) -> _Parallel | None:
    """Start the worker tasks, or return ``None`` where one process will do.

    The workers split the seqs 0 to the largest into ranges; a ledger whose
    least seq is not 0 is checked in one pass, and so is one where a range
    turns out to miss entries at its end (see :func:`_merge_entries`), so a
    gap is named as before. Fact tables and checkpoints are split by id.
    """
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    url = ledger.engine.url
    if workers < 2 or (
        url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    ):
        return None
    least, most = session.execute(
        select(func.min(LedgerEntry.seq), func.max(LedgerEntry.seq))
    ).one()
    if least != 0 or most + 1 < max(parallel_from, 1):
        return None
    count = most + 1
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_start)
    address = url.render_as_string(hide_password=False)
    try:
        entries = [
            pool.submit(_entries_part, address, first, end)
            for first, end in _ranges(0, count - 1, workers, _PART)
        ]
        rows = []
        for index, table in enumerate(FACT_TABLES):
            columns, _, id_at, _ = _table_columns(table)
            ident = columns[id_at]
            low, high = session.execute(select(func.min(ident), func.max(ident))).one()
            tasks = [
                pool.submit(_rows_part, address, index, first, end)
                for first, end in (_ranges(low, high, workers, _PART) if high is not None else [])
            ]
            rows.append(tasks)
        low, high = session.execute(
            select(func.min(LedgerCheckpoint.id), func.max(LedgerCheckpoint.id))
        ).one()
        raw = None if operator is None else operator.public_bytes(Encoding.Raw, PublicFormat.Raw)
        checkpoints = [
            pool.submit(_checkpoints_part, address, first, end, raw)
            for first, end in (
                _ranges(low, high, workers, _CHECKPOINT_PART) if high is not None else []
            )
        ]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return _Parallel(pool, count, entries, rows, checkpoints)


def _merge_rows(parallel: _Parallel) -> list[list[_Row]]:
    """Each fact table's rows as the workers read them, by id."""
    return [[row for task in tasks for row in task.result()] for tasks in parallel.rows]


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


def verify_ledger(
    ledger: Ledger,
    operator: Ed25519PublicKey | None = None,
    receipts: Sequence[tuple[str, Receipt]] = (),
    *,
    workers: int | None = None,
    parallel_from: int = PARALLEL_FROM,
) -> VerifyReport:
    """Check ``ledger`` (see the module docstring); :class:`LedgerTampered` names what failed.

    From ``parallel_from`` entries on, the checks of the entries, fact rows
    and checkpoint signatures are spread over ``workers`` processes by seq
    (or id) range, each reading the ledger on its own connection; the
    parent joins their results in order, so the error is the one a single
    pass raises: the first bad entry, fact row or checkpoint.

    Parameters
    ----------
    ledger : Ledger
        The ledger, opened without migrating it.
    operator : Ed25519PublicKey, optional
        The operator's checkpoint key; without it signatures are not checked.
    receipts : sequence of (source, Receipt)
        Receipts participants hold (:func:`common.receipts.read_receipts`);
        each must agree with the current tree.
    workers : int, optional
        Worker processes (default: the CPUs, at most 8); below 2, one pass.
    parallel_from : int
        Fewer entries than this are checked in one pass, in this process.

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
        parallel = None
        try:
            parallel = _start_parallel(session, ledger, operator, workers, parallel_from)
            leaves, entries, last_chain = _check_entries(session, parallel)
            checked, legacy = _check_rows(session, entries, parallel)
            checkpoints, tree_root = _check_checkpoints(session, leaves, operator, parallel)
            checked_receipts = _check_receipts(leaves, receipts, operator)
        finally:
            if parallel is not None:
                parallel.pool.shutdown(wait=True, cancel_futures=True)
            session.rollback()  # read-only: nothing to keep
    return VerifyReport(
        entries=len(leaves),
        tree_root=tree_root.hex(),
        chain_hash=last_chain,
        rows_checked=checked,
        rows_before_entries=legacy,
        checkpoints=checkpoints,
        signatures_checked=operator is not None,
        receipts=checked_receipts,
    )

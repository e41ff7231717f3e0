"""Checks 1 to 4: numbering, canonical payloads, leaf hashes, the hash chain and the chain tip."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.canonical import canonical_json
from ledger.entries import ZERO_HASH, canonical_payload, chain_hash, entry_leaf_hash
from ledger.schema import ChainTip, LedgerEntry
from ledger.verify.result import LedgerTampered

__all__ = ["STREAM", "Entries", "EntriesPart", "check_entries", "entry_columns", "scan_entries"]

STREAM = 10_000
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


@dataclass
class Entries:
    """What :func:`check_rows` needs of the verified entries, by seq (0 to n - 1).

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
class EntriesPart(Entries):
    """The entries of one seq range ``[first, ...)``, as a worker checked them."""

    first: int = 0
    leaves: list[bytes] = field(default_factory=list)
    last_chain: str = ZERO_HASH
    """The stored chain hash of the last entry read (of the entry before, if none)."""
    failure: tuple[int | None, str | None, str] | None = None
    """``(seq, kind, detail)`` of the first bad entry of the range, if any."""


def entry_columns() -> Any:
    return select(
        LedgerEntry.seq,
        LedgerEntry.kind,
        LedgerEntry.payload,
        LedgerEntry.leaf_hash,
        LedgerEntry.prev_hash,
        LedgerEntry.chain_hash,
    )


def scan_entries(rows: Iterable[Any], part: EntriesPart) -> None:
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


def _check_chain_tip(session: Session, size: int, last_chain: str) -> None:
    tip = session.get(ChainTip, 1)
    if tip is None or tip.size != size or tip.chain_hash != last_chain:
        raise LedgerTampered(
            None,
            None,
            f"the chain tip says {tip.size if tip else 'nothing'} entries, the table holds "
            f"{size}: entries were deleted or the chain tip was edited",
        )


def check_entries(
    session: Session, parts: Sequence[Future[EntriesPart]] = (), size: int = 0
) -> tuple[list[bytes], Entries, str]:
    """Check every entry; ``parts``, the workers' ranges of the first ``size``, if any."""
    if parts:
        merged = merge_entries(parts, size)
        if merged is not None:
            _check_chain_tip(session, len(merged[0]), merged[2])
            return merged
        # the entries changed under the workers: check them again here, in one pass
    part = EntriesPart()
    rows = session.execute(
        entry_columns().order_by(LedgerEntry.seq).execution_options(yield_per=STREAM)
    )
    scan_entries(rows, part)
    _check_chain_tip(session, len(part.leaves), part.last_chain)
    entries = Entries(part.kinds, part.keys, part.row_digests, part.stated)
    return part.leaves, entries, part.last_chain


def merge_entries(
    parts: Sequence[Future[EntriesPart]], size: int
) -> tuple[list[bytes], Entries, str] | None:
    """The workers' ranges joined in seq order; ``None`` if they miss entries.

    Each range reports its own first bad entry; the ranges before it being
    intact, the first range with one names the ledger's first bad entry.
    """
    leaves: list[bytes] = []
    entries = Entries()
    last_chain = ZERO_HASH
    for future in parts:
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
    if len(leaves) != size:
        return None
    return leaves, entries, last_chain

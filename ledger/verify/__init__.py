"""Verify a ledger from its raw rows, read-only, and name the first bad entry.

Checks, in order:

1. the entries are numbered 0, 1, 2, ... without a gap;
2. each payload is canonical JSON and its RFC 6962 leaf hash is the stored one;
3. each ``prev_hash`` is the previous entry's ``chain_hash`` and each
   ``chain_hash`` is recomputed from it;
4. the chain tip (``ledger_head``) agrees with the last entry;
5. every fact row equals the payload of the entry it names (so editing a
   typed table, such as a participant's public key, is caught), and every row
   an entry states still exists;
6. every signed tree head is well formed, covers no more entries than
   there are (a deleted tail is caught), has the RFC 6962 root of the first
   ``tree_size`` entries, and, given the operator's public key, carries the
   operator's signature;
7. every contribution value equals the one recomputed from its round's
   recorded coalition utilities (and GTG-Shapley's permutations);
8. every participant's cosignature kept for a checkpoint verifies with the
   key the ledger admitted it with and is dated at most an hour ahead of
   this clock, as recording it required (the report lists, per head, who
   witnessed it);
9. every receipt a participant holds (given with ``receipts``) still agrees
   with the ledger: its entry is the ledger's entry at that position, and
   the first ``tree_size`` entries of the current tree still have the root
   it was signed over (the receipt's head is consistent with the current
   one), so a deleted tail or a rewritten history is caught even when the
   operator also removed the signed heads it had stored.

A value that is not UTF-8 text (a SQLite file edited by hand) fails the
check that reads it; the row that holds it is named.

Nothing is written: the checks only read. Each check lives in its own
module and is given only its own inputs: :mod:`.entries` (1-4), :mod:`.rows`
(5), :mod:`.heads` (6), :mod:`.valuations` (7, with the recomputation of the
values), :mod:`.cosignatures` (8), :mod:`.receipts` (9) and :mod:`.encoding`
(undecodable text). :mod:`.parallel` runs checks 1-6 in worker processes and
hands each check its workers' results; no check module imports it.

From :data:`PARALLEL_FROM` entries on, checks 2, 3, 5 (reading and hashing
the fact rows) and 6 (body and signature of each signed head) run in worker
processes over seq or id ranges, each on its own connection; the parent
joins their results in order and makes every comparison that spans ranges,
so the error raised is the one a single pass raises.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from common.note import NoteError
from common.receipts import Receipt
from ledger.store import Ledger, LedgerError
from ledger.verify.cosignatures import check_cosignatures
from ledger.verify.encoding import is_undecodable, undecodable_row
from ledger.verify.entries import check_entries
from ledger.verify.heads import check_tree_heads
from ledger.verify.parallel import PARALLEL_FROM, start_parallel
from ledger.verify.receipts import check_receipts
from ledger.verify.result import LedgerTampered, VerifyReport
from ledger.verify.rows import check_rows
from ledger.verify.valuations import check_valuations

__all__ = [
    "PARALLEL_FROM",
    "LedgerTampered",
    "VerifyReport",
    "cosignatures",
    "encoding",
    "entries",
    "heads",
    "receipts",
    "rows",
    "valuations",
    "verify_ledger",
]


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
    and tree-head signatures are spread over ``workers`` processes by seq
    (or id) range, each reading the ledger on its own connection; the
    parent joins their results in order, so the error is the one a single
    pass raises: the first bad entry, fact row or signed head.

    Parameters
    ----------
    ledger : Ledger
        The ledger, opened without migrating it.
    operator : Ed25519PublicKey, optional
        The operator's key; without it the heads' signatures are not checked.
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
            f"{ledger.shown} has no ledger_entries table: its schema predates v5 "
            "(opening it with any writing command migrates it)"
        )
    if not inspect(ledger.engine).has_table("cosignatures"):
        raise LedgerError(
            f"{ledger.shown}'s schema predates v12 (checkpoints and cosignatures): any "
            "writing command migrates it, e.g. 'fedcommons operator status'; its older "
            "tree heads stay verifiable"
        )
    with Session(ledger.engine) as session:
        parallel = None
        try:
            parallel = start_parallel(session, ledger, operator, workers, parallel_from)
            if parallel is None:
                leaves, entries, last_chain = check_entries(session)
                checked, legacy = check_rows(session, entries)
                heads, tree_root = check_tree_heads(session, leaves, operator)
            else:
                leaves, entries, last_chain = check_entries(
                    session, parallel.entries, parallel.size
                )
                checked, legacy = check_rows(session, entries, parallel.rows)
                heads, tree_root = check_tree_heads(session, leaves, operator, parallel.heads)
            try:
                witnesses = check_cosignatures(session)
            except NoteError as err:
                raise LedgerTampered(None, None, str(err)) from None
            values = check_valuations(session)
            checked_receipts = check_receipts(leaves, receipts, operator)
        except DBAPIError as err:
            found = undecodable_row(ledger.engine) if is_undecodable(err) else None
            if found is None:
                raise
            raise found from None
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
        tree_heads=heads,
        signatures_checked=operator is not None,
        receipts=checked_receipts,
        values_checked=values,
        witnesses=witnesses.heads,
    )

"""The same checks in worker processes, by seq or id range, joined in order by the parent."""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from ledger.schema import LedgerEntry, LedgerTreeHead, LogOrigin
from ledger.store import Ledger
from ledger.verify.entries import STREAM, EntriesPart, entry_columns, scan_entries
from ledger.verify.heads import Signed, read_tree_heads, tree_head_columns
from ledger.verify.result import LedgerTampered
from ledger.verify.rows import FACT_TABLES, Row, table_columns, values_text

__all__ = ["PARALLEL_FROM", "Parallel", "start_parallel"]

PARALLEL_FROM = 50_000
"""Entries from which :func:`verify_ledger` spreads its checks over worker processes."""

_PART = 50_000
"""Most entries (or fact-row ids) one worker task checks."""

_HEAD_PART = 10_000
"""Most signed tree heads one worker task checks."""

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


def _entries_part(url: str, first: int, end: int) -> EntriesPart:
    """In a worker: check the entries ``first`` to ``end - 1`` (see :func:`scan_entries`).

    The range starts from the stored chain hash of the entry before it; if
    that entry is bad, the range before this one names it.
    """
    part = EntriesPart(first=first)
    with _worker_engine(url).connect() as connection:
        if first:
            before = select(LedgerEntry.chain_hash).where(LedgerEntry.seq == first - 1)
            last_chain = connection.execute(before).scalar_one_or_none()
            if last_chain is None:  # a gap before the range: the parent checks again alone
                return part
            part.last_chain = last_chain
        rows = connection.execute(
            entry_columns()
            .where(LedgerEntry.seq >= first, LedgerEntry.seq < end)
            .order_by(LedgerEntry.seq)
            .execution_options(yield_per=STREAM)
        )
        try:
            scan_entries(rows, part)
        except LedgerTampered as err:
            part.failure = (err.seq, err.kind, err.detail)
    return part


def _rows_part(url: str, index: int, first: int, end: int) -> list[Row]:
    """In a worker: the rows of ``FACT_TABLES[index]`` with ids ``first`` to ``end - 1``.

    A row's digest is ``None`` where its text could not be made here; the
    parent then makes it again, so that it fails there as it would alone.
    """
    columns, keys, id_at, seq_at = table_columns(FACT_TABLES[index])
    ident = columns[id_at]
    found: list[Row] = []
    with _worker_engine(url).connect() as connection:
        rows = connection.execute(
            select(*columns)
            .where(ident >= first, ident < end)
            .order_by(ident)
            .execution_options(yield_per=STREAM)
        )
        for values in rows:
            seq = values[seq_at]
            digest = None
            if seq is not None:
                try:
                    text = values_text(keys, values)
                    digest = hashlib.sha256(text.encode("ascii")).digest()
                except Exception:  # made again, and raised, in the parent
                    digest = None
            found.append((values[id_at], seq, digest))
    return found


def _heads_part(
    url: str, first: int, end: int, operator_raw: bytes | None, origin: str | None
) -> tuple[list[Signed], str | None]:
    """In a worker: :func:`read_tree_heads` of the heads ``first`` to ``end - 1`` (ids)."""
    operator = None if operator_raw is None else Ed25519PublicKey.from_public_bytes(operator_raw)
    with _worker_engine(url).connect() as connection:
        rows = connection.execute(
            tree_head_columns()
            .where(LedgerTreeHead.id >= first, LedgerTreeHead.id < end)
            .execution_options(yield_per=STREAM)
        )
        return read_tree_heads(rows, operator, origin)


@dataclass
class Parallel:
    """The worker tasks of one verification, submitted at once, in the order they are needed."""

    pool: ProcessPoolExecutor
    size: int
    """Entries the workers were given (0 to size - 1)."""
    entries: list[Future[EntriesPart]]
    rows: list[list[Future[list[Row]]]]
    """Per fact table, the tasks over its id ranges."""
    heads: list[Future[tuple[list[Signed], str | None]]]


def _ranges(low: int, high: int, workers: int, most: int) -> list[tuple[int, int]]:
    """Split ``[low, high]`` into about ``4 * workers`` ranges of at most ``most``."""
    span = high - low + 1
    step = max(1, min(most, -(-span // (4 * workers))))
    return [(start, min(start + step, high + 1)) for start in range(low, high + 1, step)]


def start_parallel(
    session: Session,
    ledger: Ledger,
    operator: Ed25519PublicKey | None,
    workers: int | None,
    parallel_from: int,
) -> Parallel | None:
    """Start the worker tasks, or return ``None`` where one process will do.

    The workers split the seqs 0 to the largest into ranges; a ledger whose
    least seq is not 0 is checked in one pass, and so is one where a range
    turns out to miss entries at its end (see :func:`merge_entries`), so a
    gap is named as before. Fact tables and heads are split by id.
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
            columns, _, id_at, _ = table_columns(table)
            ident = columns[id_at]
            low, high = session.execute(select(func.min(ident), func.max(ident))).one()
            tasks = [
                pool.submit(_rows_part, address, index, first, end)
                for first, end in (_ranges(low, high, workers, _PART) if high is not None else [])
            ]
            rows.append(tasks)
        low, high = session.execute(
            select(func.min(LedgerTreeHead.id), func.max(LedgerTreeHead.id))
        ).one()
        raw = None if operator is None else operator.public_bytes(Encoding.Raw, PublicFormat.Raw)
        origin = session.scalar(select(LogOrigin.origin).where(LogOrigin.id == 1))
        heads = [
            pool.submit(_heads_part, address, first, end, raw, origin)
            for first, end in (_ranges(low, high, workers, _HEAD_PART) if high is not None else [])
        ]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return Parallel(pool, count, entries, rows, heads)

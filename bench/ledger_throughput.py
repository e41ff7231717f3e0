"""The tamper-evident ledger: append throughput, ``audit verify`` time, proof sizes (issue 6).

Three measurements, in one run:

(a) appends, on SQLite (a file in a temporary folder) and on PostgreSQL (a
    scratch database created here and dropped afterwards). ``--entries``
    entries go through the ledger's own code, each variant into the same
    ledger one after the other:

    * ``append_entry``, ``--batch`` entries per commit (the path
      ``record_row`` takes: head lock, payload, hashes, ORM insert, per entry);
    * ``append_entries``, ``--batch`` entries per commit (the head lock taken
      once per batch, one multi-row INSERT);
    * ``append_entry``, one commit per entry (``--single`` entries);

    and, as the baseline, the very rows ``append_entries`` wrote (payloads and
    hashes already computed, no lock, no triggers) inserted again into a
    plain table of the same columns in the same database: ``executemany`` of
    ``--batch`` rows per commit, and one INSERT and commit per row. The
    entries are the payloads of a federation's facts (below) without the fact
    rows, so only the ledger's own cost is measured.

(b) ``audit verify``: a SQLite ledger is built, untimed, as the server writes
    it for a federation of ``--participants`` institutions: per round one
    privacy charge per participant (and an exclusion in about one round in
    twenty), the round, one update per participant, then a checkpoint signed
    by the operator; runs of ``--rounds-per-run`` rounds that start and
    finish (a finished run is restated). The fact rows are real rows whose
    ``entry_seq`` names their entry. It is grown to each of ``--verify-sizes``
    entries and :func:`ledger.verify.verify_ledger` (the function the
    CLI calls, not the CLI: no start-up) is timed with the operator's key, so
    every check runs, signatures included, in a fresh process (its peak memory
    above what it held before verifying is reported too).

(c) RFC 6962 proofs with :mod:`common.merkle`: size (hashes and bytes) of an
    inclusion proof and of a consistency proof (from half the tree), and the
    median time to build one from the leaf list (``inclusion_proof``,
    ``consistency_proof``), to build it from a :class:`~common.merkle_log.MerkleLog`
    (the cached tree the server's ``LedgerTree`` keeps) and to verify it, for
    trees of ``--proof-sizes`` leaves; also the time and memory to append the
    largest tree's leaves to a ``MerkleLog``. ``--only-proofs`` runs this part
    alone and writes ``bench/results/ledger_proofs.json`` instead.

Goals (issue 6): >= 5,000 appends/s on SQLite; a 1M-entry verify in < 60 s.
Rows are written to ``bench/results/ledger.json``.

Usage::

    python bench/ledger_throughput.py [--entries 20000] [--batch 1000] [--single 1000]
    python bench/ledger_throughput.py --only-proofs [--proof-sizes 1000 100000 1000000]
    python bench/ledger_throughput.py --only-verify [--verify-sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: E402
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    Encoding,
    PublicFormat,
)
from record import write_record  # noqa: E402  (bench/record.py)
from sqlalchemy import (  # noqa: E402
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session  # noqa: E402

from common.consortium import default_log_origin  # noqa: E402
from common.keys import key_id  # noqa: E402
from common.merkle import TreeBuilder, leaf_hash, verify_consistency, verify_inclusion  # noqa: E402
from common.merkle_log import MerkleLog  # noqa: E402
from common.receipts import TreeHead  # noqa: E402
from ledger import verify as verify_module  # noqa: E402
from ledger.entries import (  # noqa: E402
    append_entries,
    append_entry,
    canonical_payload,
    column_facts,
)
from ledger.schema import (  # noqa: E402
    Base,
    Charge,
    Dataset,
    Exclusion,
    LedgerEntry,
    LedgerTreeHead,
    Participant,
    Round,
    RoundUpdate,
    Run,
)
from ledger.store import Ledger  # noqa: E402
from ledger.verify import verify_ledger  # noqa: E402
from tests.support.merkle_reference import consistency_proof, inclusion_proof, root  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ledger.json"
PROOF_RESULTS = ROOT / "bench" / "results" / "ledger_proofs.json"
VERIFY_RESULTS = ROOT / "bench" / "results" / "ledger_verify.json"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
APPEND_GOAL = 5_000.0
"""Entries per second on SQLite (issue 6)."""
VERIFY_GOAL_S = 60.0
"""Seconds to verify a 1M-entry ledger (issue 6)."""
T0 = datetime(2026, 11, 23, tzinfo=timezone.utc)
PHASES = ("check_entries", "check_rows", "check_tree_heads")
"""The steps of ``verify_ledger`` timed apart: entries and chain, fact rows, signed heads."""


# --- a federation's facts -----------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """One fact the server records: a row's columns (its id included) and the entry kind."""

    kind: str
    table: type[Base]
    values: dict[str, Any]
    new: bool = True
    """False for a later entry restating a row that exists (a run that finished)."""

    def doc(self) -> dict[str, Any]:
        """The document ``record_row`` appends for this row (``row_facts`` of it)."""
        columns = inspect(self.table).columns
        facts = column_facts((c.key, self.values.get(c.key)) for c in columns)
        return {"table": self.table.__tablename__, "id": self.values["id"], "row": facts}


ROUND_END = None
"""Yielded by :func:`federation` after each round: where the server signs a checkpoint."""


def federation(participants: int, rounds_per_run: int, seed: int = 0) -> Iterator[Fact | None]:
    """The facts of a federation in the order the server records them, without end.

    Values have the shapes and sizes of the real ones (SHA-256 hex digests,
    base64 Ed25519 signatures and keys, floats with all their digits).
    """
    rng = random.Random(seed)

    def digest() -> str:
        return rng.randbytes(32).hex()

    def b64(n: int) -> str:
        return base64.b64encode(rng.randbytes(n)).decode()

    ids: dict[type[Base], Iterator[int]] = {}

    def next_id(table: type[Base]) -> int:
        return next(ids.setdefault(table, itertools.count(1)))

    at = T0
    names = [f"institution-{i:02d}" for i in range(participants)]
    people: dict[str, int] = {}
    datasets: dict[str, str] = {}
    for name in names:
        public = b64(32)
        people[name] = next_id(Participant)
        yield Fact(
            "participant",
            Participant,
            {
                "id": people[name],
                "name": name,
                "kind": "academia" if len(people) % 2 else "industry",
                "public_key": public,
                "signing_key_id": digest(),
                "supernode_public_key": f"ssh-ed25519 {b64(51)}",
                "enrolled_at": at,
                "admitted_at": at,
            },
        )
        datasets[name] = digest()
        terms = {"id": "CC-BY-4.0", "purposes": ["research"], "expires": "2027-12-31"}
        yield Fact(
            "dataset",
            Dataset,
            {
                "id": next_id(Dataset),
                "participant_id": people[name],
                "sha256": datasets[name],
                "records": rng.randrange(1_000, 100_000),
                "format": "csv",
                "schema_json": json.dumps({"label": "int", "text": "str"}, sort_keys=True),
                "licence": "CC-BY-4.0",
                "licence_terms": json.dumps(terms, sort_keys=True),
                "request_sha256": digest(),
                "recorded_at": at,
            },
        )
    epsilon = dict.fromkeys(names, 0.0)
    while True:
        run = {
            "id": next_id(Run),
            "flower_run_id": str(rng.getrandbits(63)),
            "policy_sha256": digest(),
            "policy_toml": "[federation]\nrounds = 100\n[privacy]\nepsilon = 8.0\n",
            "model": "cnn",
            "dataset": "digits",
            "initial_model_sha256": digest(),
            "base_model_sha256": digest(),
            "planned_rounds": rounds_per_run,
            "status": "running",
            "started_at": at,
        }
        yield Fact("run", Run, run)
        model = run["initial_model_sha256"]
        for number in range(1, rounds_per_run + 1):
            at += timedelta(seconds=20)
            for name in names:
                epsilon[name] += rng.uniform(0.01, 0.1)
                yield Fact(
                    "privacy-charge",
                    Charge,
                    {
                        "id": next_id(Charge),
                        "run_id": run["id"],
                        "round_number": number,
                        "participant_id": people[name],
                        "dataset_sha256": datasets[name],
                        "dp": True,
                        "epsilon": epsilon[name],
                        "delta": 1e-5,
                        "noise_multiplier": 1.1,
                        "sample_rate": rng.uniform(0.01, 0.1),
                        "steps": rng.randrange(10, 200),
                        "accountant": "rdp",
                        "max_grad_norm": 1.0,
                        "history_sha256": digest(),
                        "recorded_at": at,
                    },
                )
            if rng.random() < 0.05:
                yield Fact(
                    "exclusion",
                    Exclusion,
                    {
                        "id": next_id(Exclusion),
                        "run_id": run["id"],
                        "round_number": number,
                        "participant_id": people[rng.choice(names)],
                        "node_id": str(rng.getrandbits(63)),
                        "code": 3,
                        "reason": "privacy budget exhausted: epsilon would exceed 8.0",
                        "recorded_at": at,
                    },
                )
            round_id = next_id(Round)
            after = digest()
            yield Fact(
                "round",
                Round,
                {
                    "id": round_id,
                    "run_id": run["id"],
                    "number": number,
                    "model_sha256_before": model,
                    "model_sha256_after": after,
                    "loss": rng.uniform(0.1, 2.0),
                    "accuracy": rng.uniform(0.5, 1.0),
                    "train_loss": rng.uniform(0.1, 2.0),
                    "num_participants": participants,
                    "seconds": rng.uniform(10, 30),
                    "finished_at": at,
                },
            )
            model = after
            for name in names:
                yield Fact(
                    "update",
                    RoundUpdate,
                    {
                        "id": next_id(RoundUpdate),
                        "round_id": round_id,
                        "participant_id": people[name],
                        "num_examples": rng.randrange(100, 10_000),
                        "train_loss": rng.uniform(0.1, 2.0),
                        "update_sha256": digest(),
                        "update_bytes": 16_256,
                        "train_seconds": rng.uniform(1, 10),
                        "ciphertext_sha256": digest(),
                        "plaintext_sha256": digest(),
                        "signature": b64(64),
                        "signer_key_id": digest(),
                        "seal_seconds": rng.uniform(0.001, 0.01),
                        "open_seconds": rng.uniform(0.001, 0.01),
                    },
                )
            yield ROUND_END
        finished = {
            **run,
            "status": "finished",
            "test_accuracy": rng.uniform(0.5, 1.0),
            "test_loss": rng.uniform(0.1, 2.0),
            "ended_at": at,
        }
        yield Fact("run", Run, finished, new=False)


def sample_items(
    count: int, participants: int, rounds_per_run: int
) -> list[tuple[str, dict[str, Any]]]:
    """The first ``count`` facts of a federation as ``(kind, doc)`` pairs to append."""
    facts = (f for f in federation(participants, rounds_per_run) if f is not None)
    return [(f.kind, f.doc()) for f in itertools.islice(facts, count)]


# --- (a) appends --------------------------------------------------------------


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _rate(count: int, action: Callable[[], object]) -> dict[str, float]:
    start = time.perf_counter()
    action()
    seconds = time.perf_counter() - start
    return {"entries": count, "seconds": seconds, "per_s": count / seconds}


def measure_appends(
    backend: str, url: str, items: list[tuple[str, dict[str, Any]]], batch: int, single: int
) -> list[dict[str, Any]]:
    """Append ``items`` through the ledger's code and insert the same rows plainly."""
    ledger = Ledger(url)
    rows: list[dict[str, Any]] = []

    def add(variant: str, commit: str, figure: dict[str, float]) -> None:
        rows.append({"backend": backend, "variant": variant, "commit": commit, **figure})
        print(f"  {backend:10s} {variant:36s} {commit:22s} {figure['entries']:>7,d} entries "
              f"{figure['seconds']:7.2f} s {figure['per_s']:9,.0f} /s", flush=True)  # fmt: skip

    try:

        def one_by_one_batched() -> None:
            for chunk in _chunks(items, batch):
                with ledger.session() as session:
                    for kind, doc in chunk:
                        append_entry(session, kind, doc)

        def batched() -> None:
            for chunk in _chunks(items, batch):
                with ledger.session() as session:
                    append_entries(session, chunk)

        def one_commit_each() -> None:
            for kind, doc in items[:single]:
                with ledger.session() as session:
                    append_entry(session, kind, doc)

        per_batch = f"{batch:,d} per commit"
        add("append_entry", per_batch, _rate(len(items), one_by_one_batched))
        first = len(items)  # the rows append_entries writes, the baseline's input
        add("append_entries", per_batch, _rate(len(items), batched))
        add("append_entry", "1 per commit", _rate(single, one_commit_each))

        entries = LedgerEntry.__table__
        with ledger.engine.connect() as connection:
            written = [
                dict(row._mapping)
                for row in connection.execute(
                    select(entries)
                    .where(entries.c.seq.between(first, first + len(items) - 1))
                    .order_by(entries.c.seq)
                )
            ]
        plain = Table(
            "bench_plain_entries",
            MetaData(),
            Column("seq", BigInteger, primary_key=True, autoincrement=False),
            Column("kind", String(32), nullable=False),
            Column("payload", Text, nullable=False),
            Column("leaf_hash", String(64), nullable=False),
            Column("prev_hash", String(64), nullable=False),
            Column("chain_hash", String(64), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
        )
        plain.create(ledger.engine)

        def raw_batched() -> None:
            for chunk in _chunks(written, batch):
                with ledger.engine.begin() as connection:
                    connection.execute(insert(plain), chunk)

        def raw_one_each() -> None:
            for row in written[:single]:
                with ledger.engine.begin() as connection:
                    connection.execute(insert(plain), {**row, "seq": row["seq"] + len(items)})

        add("raw INSERT, same rows (baseline)", per_batch, _rate(len(written), raw_batched))
        add("raw INSERT, same rows (baseline)", "1 per commit", _rate(single, raw_one_each))
    finally:
        ledger.close()
    return rows


def scratch_postgres() -> tuple[str, Callable[[], None]]:
    """A fresh database on the local PostgreSQL server, and the function that drops it."""
    name = f"bench_ledger_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return f"postgresql://postgres@127.0.0.1:5432/{name}", drop


# --- (b) audit verify ---------------------------------------------------------


class LedgerBuilder:
    """Grows a ledger as the server writes it, fast: entries in batches, rows in bulk.

    Entries go through :func:`~ledger.entries.append_entries`; fact rows
    and checkpoints are inserted with executemany in the same transaction,
    each row naming its entry. Checkpoints are signed as ``sign_tree_head``
    signs them, after every round.
    """

    def __init__(self, ledger: Ledger, participants: int, rounds_per_run: int) -> None:
        self.ledger = ledger
        self.facts = federation(participants, rounds_per_run)
        self.operator = Ed25519PrivateKey.generate()
        self.operator_id = key_id(self.operator.public_key())
        self.tree = TreeBuilder()
        self.size = 0
        self.checkpoints = 0
        self.payload_bytes = 0

    def grow_to(self, size: int, batch: int = 10_000) -> None:
        """Append facts until the ledger holds ``size`` entries."""
        while self.size < size:
            self._append(min(batch, size - self.size))

    def _append(self, count: int) -> None:
        facts: list[Fact] = []
        round_ends: list[int] = []  # tree sizes after which a checkpoint is signed
        while len(facts) < count:
            fact = next(self.facts)
            if fact is ROUND_END:
                round_ends.append(self.size + len(facts))
            else:
                facts.append(fact)
        with Session(self.ledger.engine) as session, session.begin():
            seqs = append_entries(session, [(f.kind, f.doc()) for f in facts])
            new: dict[type[Base], list[dict[str, Any]]] = {}
            restated: list[tuple[Fact, int]] = []
            for fact, seq in zip(facts, seqs, strict=True):
                if fact.new:
                    new.setdefault(fact.table, []).append({**fact.values, "entry_seq": seq})
                else:
                    restated.append((fact, seq))
            for table, rows in new.items():
                session.execute(insert(table), rows)
            for fact, seq in restated:  # after the inserts: the row may be in this batch
                # ORM bulk UPDATE by primary key (the values hold the id)
                session.execute(update(fact.table), [{**fact.values, "entry_seq": seq}])
            written = session.execute(
                select(LedgerEntry.leaf_hash, sqlalchemy.func.length(LedgerEntry.payload))
                .where(LedgerEntry.seq >= seqs[0])
                .order_by(LedgerEntry.seq)
            ).all()
            signed = []
            for leaf, length in written:
                self.payload_bytes += length
                self.tree.append(bytes.fromhex(leaf))
                while round_ends and round_ends[0] == self.tree.size:
                    round_ends.pop(0)
                    signed.append(self._sign())
            if signed:
                session.execute(insert(LedgerTreeHead), signed)
        self.size += len(facts)
        self.checkpoints += len(signed)

    def _sign(self) -> dict[str, Any]:
        """A C2SP checkpoint of the log, as ``sign_tree_head`` stores it."""
        checkpoint = TreeHead.sign(
            self.operator,
            tree_size=self.tree.size,
            root=self.tree.root().hex(),
            at=T0.isoformat(timespec="seconds"),
            note=f"after the round ending at entry {self.tree.size - 1}",
            origin=default_log_origin(self.operator.public_key()),
        )
        return {
            "tree_size": checkpoint.tree_size,
            "root_hash": checkpoint.root,
            "body": checkpoint.body().decode(),
            "key_id": checkpoint.key_id,
            "signature": checkpoint.signature,
            "checkpoint": checkpoint.checkpoint,
            "signed_at": checkpoint.at,
            "label": checkpoint.note,
        }


def _rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() // 1024


def verify_child(url: str, operator_b64: str) -> None:
    """In a fresh process: time ``verify_ledger`` and print its figures as JSON."""
    operator = Ed25519PublicKey.from_public_bytes(base64.b64decode(operator_b64))
    ledger = Ledger(url, migrate=False)
    phases: dict[str, float] = {}

    def timed(name: str, check: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return check(*args)
            finally:
                phases[name] = time.perf_counter() - start

        return wrapper

    # the same run, split by verify_ledger's own steps (looked up when it calls them)
    for name in PHASES:
        setattr(verify_module, name, timed(name, getattr(verify_module, name)))
    before = _rss_kib()
    start = time.perf_counter()
    report = verify_ledger(ledger, operator)
    seconds = time.perf_counter() - start
    phases["rest (tree root, head, receipts)"] = seconds - sum(phases.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ledger.close()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "entries": report.entries,
                "rows_checked": report.rows_checked,
                "checkpoints": report.tree_heads,
                "signatures_checked": report.signatures_checked,
                "peak_rss_added_mib": (peak - before) / 1024,
                "phases_seconds": phases,
            }
        )
    )


def measure_verify(
    folder: Path, sizes: list[int], participants: int, rounds_per_run: int
) -> list[dict[str, Any]]:
    """Grow one SQLite ledger to each size in turn and time a verify of it."""
    url = f"sqlite:///{folder / 'verify.db'}"
    ledger = Ledger(url)
    builder = LedgerBuilder(ledger, participants, rounds_per_run)
    operator = base64.b64encode(
        builder.operator.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
    rows = []
    try:
        for size in sorted(sizes):
            start = time.perf_counter()
            builder.grow_to(size)
            built = time.perf_counter() - start
            child = subprocess.run(
                [sys.executable, __file__, "--verify-child", url, operator],
                capture_output=True,
                text=True,
                check=True,
            )
            figure = json.loads(child.stdout.strip().splitlines()[-1])
            assert figure["entries"] == size, figure
            row = {
                "entries": size,
                **figure,
                "per_s": size / figure["seconds"],
                "mean_payload_bytes": builder.payload_bytes / builder.size,
                "database_mib": (folder / "verify.db").stat().st_size / 2**20,
                "untimed_build_seconds": built,
                "goal_ratio": figure["seconds"] / VERIFY_GOAL_S if size == 1_000_000 else None,
            }
            rows.append(row)
            print(f"  verify {size:>9,d} entries: {row['seconds']:7.2f} s "
                  f"({row['per_s']:,.0f} entries/s), {row['rows_checked']:,d} fact rows, "
                  f"{row['checkpoints']:,d} checkpoints, +{row['peak_rss_added_mib']:,.0f} MiB; "
                  f"mean payload {row['mean_payload_bytes']:.0f} B; "
                  f"built untimed in {built:.1f} s", flush=True)  # fmt: skip
            print("    " + ", ".join(f"{k} {v:.2f} s" for k, v in figure["phases_seconds"].items()))
    finally:
        ledger.close()
    return rows


# --- (c) proofs ---------------------------------------------------------------


def _median_s(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def proof_figures(leaves: list[bytes], log: MerkleLog, size: int) -> dict[str, Any]:
    """Inclusion proof of leaf ``size // 3`` and consistency proof from ``size // 2``.

    ``log`` holds at least ``size`` leaves (the same as ``leaves``); its
    proofs are for the tree of the first ``size``, as a server's for an older
    checkpoint would be.
    """
    index, old = size // 3, size // 2
    head, old_head = root(leaves[:size]), root(leaves[:old])
    repeats = 3 if size >= 500_000 else 11
    proof = inclusion_proof(leaves, index, size)
    verify_inclusion(leaves[index], index, size, proof, head)
    consistency = consistency_proof(leaves, old, size)
    verify_consistency(old, size, old_head, head, consistency)
    build = _median_s(lambda: inclusion_proof(leaves, index, size), repeats)
    check = _median_s(lambda: verify_inclusion(leaves[index], index, size, proof, head), 1001)
    build_c = _median_s(lambda: consistency_proof(leaves, old, size), repeats)
    check_c = _median_s(lambda: verify_consistency(old, size, old_head, head, consistency), 1001)
    assert log.root(size) == head and log.root(old) == old_head
    assert log.inclusion_proof(index, size) == proof
    assert log.consistency_proof(old, size) == consistency
    cached = _median_s(lambda: log.inclusion_proof(index, size), 1001)
    cached_c = _median_s(lambda: log.consistency_proof(old, size), 1001)
    return {
        "tree_size": size,
        "leaf_index": index,
        "inclusion_hashes": len(proof),
        "inclusion_bytes": 32 * len(proof),
        "inclusion_build_ms": build * 1e3,
        "inclusion_verify_us": check * 1e6,
        "consistency_from": old,
        "consistency_hashes": len(consistency),
        "consistency_bytes": 32 * len(consistency),
        "consistency_build_ms": build_c * 1e3,
        "consistency_verify_us": check_c * 1e6,
        "build_repeats": repeats,
        "cached_inclusion_build_us": cached * 1e6,
        "cached_consistency_build_us": cached_c * 1e6,
        "cached_inclusion_ratio": cached / build,
        "cached_consistency_ratio": cached_c / build_c,
        "cached_build_repeats": 1001,
    }


def measure_merkle_log(leaves: list[bytes]) -> tuple[dict[str, Any], MerkleLog]:
    """Time appending ``leaves`` to a fresh :class:`MerkleLog`, and the memory it then holds.

    The memory is the process's resident size added by the append (the leaf
    hashes themselves are already held by ``leaves`` and shared, so this is
    the cache of interior heads and the lists' slots), measured in the same
    run as the time; a second, untimed count adds up the objects' sizes.
    """
    before = _rss_kib()
    start = time.perf_counter()
    log = MerkleLog()
    for leaf in leaves:
        log.append(leaf)
    seconds = time.perf_counter() - start
    added = _rss_kib() - before
    levels = log._levels
    interior = sum(len(level) for level in levels[1:])
    counted = sum(sys.getsizeof(level) for level in levels) + sum(
        sys.getsizeof(node) for level in levels[1:] for node in level
    )
    row = {
        "leaves": len(leaves),
        "append_seconds": seconds,
        "appends_per_s": len(leaves) / seconds,
        "interior_heads": interior,
        "rss_added_mib": added / 1024,
        "counted_mib_without_leaf_objects": counted / 2**20,
        "counted_mib_with_leaf_objects": (counted + len(leaves) * sys.getsizeof(leaves[0])) / 2**20,
    }
    print(f"  MerkleLog: {len(leaves):,d} appends in {seconds:.2f} s "
          f"({row['appends_per_s']:,.0f}/s), {interior:,d} interior heads; "
          f"RSS +{row['rss_added_mib']:.0f} MiB; counted "
          f"{row['counted_mib_without_leaf_objects']:.0f} MiB without the leaf objects, "
          f"{row['counted_mib_with_leaf_objects']:.0f} MiB with them", flush=True)  # fmt: skip
    return row, log


def measure_proofs(sizes: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Inclusion and consistency proofs for trees of ``sizes`` leaves; the cached tree's cost."""
    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(max(sizes))]
    log_row, log = measure_merkle_log(leaves)
    rows = []
    for size in sorted(sizes):
        row = proof_figures(leaves, log, size)
        rows.append(row)
        print(f"  proofs, tree of {size:>9,d}: inclusion {row['inclusion_hashes']} hashes "
              f"({row['inclusion_bytes']} B), build {row['inclusion_build_ms']:.2f} ms, "
              f"verify {row['inclusion_verify_us']:.1f} us; consistency from "
              f"{row['consistency_from']:,d}: {row['consistency_hashes']} hashes "
              f"({row['consistency_bytes']} B), build {row['consistency_build_ms']:.2f} ms, "
              f"verify {row['consistency_verify_us']:.1f} us", flush=True)  # fmt: skip
        print(f"    cached (MerkleLog): inclusion {row['cached_inclusion_build_us']:.1f} us "
              f"({row['cached_inclusion_ratio']:.2g} of the leaf list's), consistency "
              f"{row['cached_consistency_build_us']:.1f} us "
              f"({row['cached_consistency_ratio']:.2g})", flush=True)  # fmt: skip
    return rows, log_row


# --- main ---------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000, help="appended per variant")
    parser.add_argument("--batch", type=int, default=1_000, help="entries per commit")
    parser.add_argument("--single", type=int, default=1_000, help="entries, one commit each")
    parser.add_argument("--participants", type=int, default=3, help="in the federation")
    parser.add_argument("--rounds-per-run", type=int, default=100)
    parser.add_argument(
        "--verify-sizes", type=int, nargs="+", default=[100_000, 1_000_000], metavar="N"
    )
    parser.add_argument(
        "--proof-sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000], metavar="N"
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--only-proofs",
        action="store_true",
        help=f"run (c) alone; rows go to {PROOF_RESULTS.relative_to(ROOT)}",
    )
    parser.add_argument(
        "--only-verify",
        action="store_true",
        help=f"run (b) alone; rows go to {VERIFY_RESULTS.relative_to(ROOT)}",
    )
    parser.add_argument("--verify-child", nargs=2, metavar=("URL", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.verify_child:
        verify_child(*args.verify_child)
        return

    started = time.perf_counter()
    if args.only_verify:
        print("(b) audit verify (SQLite)", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
            verify = measure_verify(
                Path(folder), args.verify_sizes, args.participants, args.rounds_per_run
            )
        total = time.perf_counter() - started
        print(f"total {total:.0f} s")
        write_record(
            VERIFY_RESULTS,
            versions={"sqlalchemy": sqlalchemy.__version__, "sqlite": _sqlite_version()},
            settings=vars(args),
            verify=verify,
            total_seconds=total,
        )
        return
    if args.only_proofs:
        print("(c) proofs", flush=True)
        proofs, merkle_log = measure_proofs(args.proof_sizes)
        total = time.perf_counter() - started
        print(f"total {total:.0f} s")
        write_record(
            PROOF_RESULTS,
            settings=vars(args),
            proofs=proofs,
            merkle_log=merkle_log,
            total_seconds=total,
        )
        return
    items = sample_items(args.entries, args.participants, args.rounds_per_run)
    mean_bytes = statistics.mean(len(canonical_payload(doc)) for _, doc in items)
    print(f"(a) appends: {len(items):,d} facts, mean doc {mean_bytes:.0f} B", flush=True)
    appends: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        url = f"sqlite:///{Path(folder) / 'appends.db'}"
        appends += measure_appends("SQLite", url, items, args.batch, args.single)
    if not args.skip_postgres:
        url, drop = scratch_postgres()
        try:
            appends += measure_appends("PostgreSQL", url, items, args.batch, args.single)
        finally:
            drop()
    for row in appends:
        baseline = next(
            r["per_s"]
            for r in appends
            if r["backend"] == row["backend"]
            and r["commit"] == row["commit"]
            and r["variant"].startswith("raw")
        )
        row["ratio_to_raw_insert"] = row["per_s"] / baseline
        row["ratio_to_goal"] = row["per_s"] / APPEND_GOAL

    print("(b) audit verify (SQLite)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        verify = measure_verify(
            Path(folder), args.verify_sizes, args.participants, args.rounds_per_run
        )

    print("(c) proofs", flush=True)
    proofs, merkle_log = measure_proofs(args.proof_sizes)

    print(f"\n{'backend':10s} {'variant':36s} {'commit':18s} {'entries/s':>10s} "
          f"{'/ raw INSERT':>12s} {'/ goal 5,000':>12s}")  # fmt: skip
    for row in appends:
        print(f"{row['backend']:10s} {row['variant']:36s} {row['commit']:18s} "
              f"{row['per_s']:10,.0f} {row['ratio_to_raw_insert']:12.2f} "
              f"{row['ratio_to_goal']:12.2f}")  # fmt: skip
    for row in verify:
        goal = "" if row["goal_ratio"] is None else f", {row['goal_ratio']:.2f} of the goal (60 s)"
        print(f"verify {row['entries']:>9,d} entries: {row['seconds']:7.2f} s{goal}")
    total = time.perf_counter() - started
    print(f"total {total:.0f} s")
    write_record(
        RESULTS,
        versions={
            "sqlalchemy": sqlalchemy.__version__,
            "psycopg": _version("psycopg"),
            "sqlite": _sqlite_version(),
        },
        settings=vars(args),
        mean_doc_bytes=mean_bytes,
        appends=appends,
        verify=verify,
        proofs=proofs,
        merkle_log=merkle_log,
        total_seconds=total,
    )


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "absent"


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


if __name__ == "__main__":
    main()

"""Ledger tables (SQLAlchemy 2 typed ORM). Logic lives in :mod:`ledger.store`.

The schema is designed to grow without a rewrite: later migrations add the
hash-chained ``ledger_entries`` table, licences and privacy charges, and give
each fact row a reference to its entry.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ApiToken",
    "Base",
    "ChainTip",
    "Charge",
    "Contribution",
    "Cosignature",
    "Dataset",
    "Exclusion",
    "LedgerEntry",
    "LedgerTreeHead",
    "LogOrigin",
    "Participant",
    "Release",
    "Round",
    "RoundUpdate",
    "Run",
    "Suspension",
    "Valuation",
]

PARTICIPANT_KINDS = ("academia", "industry")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


IntPk = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
Sha256 = Annotated[str, mapped_column(String(64))]
Timestamp = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow)]
EntrySeq = Annotated[int | None, mapped_column(BigInteger, default=None)]
"""A fact row's reference to the ledger entry that records it as it is now (ledger v5)."""


class Base(DeclarativeBase):
    pass


class LedgerEntry(Base):
    """One fact, append-only: canonical JSON, its RFC 6962 leaf hash, and the hash chain.

    ``leaf_hash`` = SHA-256(0x00 ‖ payload); ``chain_hash`` = SHA-256(prev_hash ‖
    leaf_hash) over the raw 32-byte digests; the first entry's ``prev_hash``
    is 64 zeros. Database triggers refuse UPDATE and DELETE on this table.
    """

    __tablename__ = "ledger_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    leaf_hash: Mapped[Sha256]
    prev_hash: Mapped[Sha256]
    chain_hash: Mapped[Sha256]
    created_at: Mapped[Timestamp]


class LedgerTreeHead(Base):
    """A signed tree head; append-only like the entries.

    From v12 a head is a C2SP checkpoint: ``checkpoint`` is the operator-signed
    note verbatim, ``body`` its signed text (origin, size, root) and
    ``signature`` the base64 of its operator signature line; ``signed_at`` and
    ``label`` describe it but are not signed. Before v12 ``body`` is the exact
    canonical JSON that was signed (size, root, time, note) and the new
    columns are empty.
    """

    __tablename__ = "tree_heads"  # "ledger_checkpoints" before v7

    id: Mapped[IntPk]
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[Sha256]
    body: Mapped[str] = mapped_column(Text)
    key_id: Mapped[Sha256]
    signature: Mapped[str] = mapped_column(Text)
    checkpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    signed_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    label: Mapped[str | None] = mapped_column(Text, nullable=True)


class LogOrigin(Base):
    """The log's identity: the origin line of its checkpoints (one row, set once)."""

    __tablename__ = "log_origin"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    origin: Mapped[str] = mapped_column(Text)


class Cosignature(Base):
    """A participant's ``cosignature/v1`` line on a checkpoint it checked (append-only)."""

    __tablename__ = "cosignatures"
    __table_args__ = (UniqueConstraint("tree_head_id", "witness"),)

    id: Mapped[IntPk]
    tree_head_id: Mapped[int] = mapped_column(ForeignKey("tree_heads.id"))
    witness: Mapped[str] = mapped_column(String(64))
    line: Mapped[str] = mapped_column(Text)
    cosigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ChainTip(Base):
    """The chain tip, a single row: how many entries there are and the last chain hash.

    Every append updates it first, which takes the row's (PostgreSQL) or the
    database's (SQLite) write lock: appends are serialised and cannot fork.
    """

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    chain_hash: Mapped[Sha256]


class Participant(Base):
    """An enrolled institution; ``public_key`` is filled in by enrolment later."""

    __tablename__ = "participants"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Set by admission (ledger v4): the Ed25519 key its updates are signed with
    # (base64 of the raw bytes), that key's id (sha256 of the raw bytes) and
    # the OpenSSH public key of its Flower SuperNode.
    public_key: Mapped[str | None] = mapped_column(Text, default=None)
    signing_key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    supernode_public_key: Mapped[str | None] = mapped_column(Text, default=None)
    enrolled_at: Mapped[Timestamp]
    admitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    datasets: Mapped[list[Dataset]] = relationship(
        back_populates="participant", order_by="Dataset.id"
    )


class Dataset(Base):
    """A participant's dataset as its enrolment request declared it: a manifest, never data."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("participant_id", "sha256"),)

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    sha256: Mapped[Sha256]
    records: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    schema_json: Mapped[str] = mapped_column(Text)
    licence: Mapped[str] = mapped_column(String(256))
    # The licence's structured terms (canonical JSON; ledger v5).
    licence_terms: Mapped[str | None] = mapped_column(Text, default=None)
    # sha256 of the signed enrolment request the manifest came from.
    request_sha256: Mapped[Sha256]
    recorded_at: Mapped[Timestamp]

    participant: Mapped[Participant] = relationship(back_populates="datasets")


class Run(Base):
    """One federated run started from a policy."""

    __tablename__ = "runs"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    # Flower run ids are unsigned 64-bit: kept as text, they fit every backend.
    flower_run_id: Mapped[str | None] = mapped_column(String(20), default=None, index=True)
    policy_sha256: Mapped[Sha256]
    policy_toml: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(128))
    initial_model_sha256: Mapped[Sha256]
    # The frozen weights that never travel (sha256 of their safetensors bytes):
    # the base model every node loads itself. None for runs before v3.
    base_model_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    planned_rounds: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    test_accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    test_loss: Mapped[float | None] = mapped_column(Float, default=None)
    # Why a run stopped early (e.g. too few nodes left within their privacy budgets).
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[Timestamp]
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    rounds: Mapped[list[Round]] = relationship(back_populates="run", order_by="Round.number")


class FlowerRun(Base):
    """One Flower run that carried a ledger run (ledger v8): the first, then each resume.

    ``first_round`` is the ledger round it started from (1, or the round after
    the last one recorded before a crash).
    """

    __tablename__ = "flower_runs"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    flower_run_id: Mapped[str] = mapped_column(String(20), index=True)
    first_round: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[Timestamp]


class Round(Base):
    """One completed round: the global model before and after, and its metrics."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    number: Mapped[int] = mapped_column(Integer)
    model_sha256_before: Mapped[Sha256]
    model_sha256_after: Mapped[Sha256]
    loss: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float] = mapped_column(Float)
    num_participants: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[Timestamp]

    run: Mapped[Run] = relationship(back_populates="rounds")
    updates: Mapped[list[RoundUpdate]] = relationship(back_populates="round")


class RoundUpdate(Base):
    """One participant's contribution to one round (its hash, never its content)."""

    __tablename__ = "round_updates"
    __table_args__ = (UniqueConstraint("round_id", "participant_id"),)

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    num_examples: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    update_sha256: Mapped[Sha256]
    update_bytes: Mapped[int] = mapped_column(BigInteger)
    train_seconds: Mapped[float] = mapped_column(Float)
    # The sealed update (ledger v4): hashes of what travelled and of what it
    # decrypted to, and the participant's Ed25519 signature (base64) with its key id.
    ciphertext_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    plaintext_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    signature: Mapped[str | None] = mapped_column(Text, default=None)
    signer_key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # Time spent serialising, encrypting and signing (reported by the client)
    # and verifying and decrypting (measured by the server).
    seal_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    open_seconds: Mapped[float | None] = mapped_column(Float, default=None)

    round: Mapped[Round] = relationship(back_populates="updates")
    participant: Mapped[Participant] = relationship()


class Charge(Base):
    """What one round cost one participant's dataset in privacy (reported by its client).

    ``epsilon`` is cumulative over every round of every run on the dataset,
    as the client's persistent accountant computes it; infinite when the run
    trained without DP. Charges are recorded as replies arrive, also for a
    round that later fails, since the client has spent the budget anyway. A
    round trained again after a crash is charged again (ledger v8 lifted the
    one-charge-per-round rule): both charges stand.
    """

    __tablename__ = "privacy_charges"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    round_number: Mapped[int] = mapped_column(Integer)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    dataset_sha256: Mapped[Sha256]
    dp: Mapped[bool] = mapped_column(Boolean)
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    noise_multiplier: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    accountant: Mapped[str] = mapped_column(String(16))
    max_grad_norm: Mapped[float] = mapped_column(Float)
    history_sha256: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[Timestamp]

    participant: Mapped[Participant] = relationship()


class Defence(Base):
    """What a robustness defence did to one accepted update in one round (ledger v9).

    ``rule`` is ``norm-bound`` (the update was clipped: ``norm_before`` and
    ``norm_after`` say how much), the aggregation rule that left the update
    out (``action`` ``discarded``) or used only part of it (``trimmed``:
    ``share`` of its coordinates were not used), ``trust`` (its weight against
    the reference update), or collusion evidence (``action`` ``suspected``;
    see docs/ledger.md).
    """

    __tablename__ = "defences"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    round_number: Mapped[int] = mapped_column(Integer)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    rule: Mapped[str] = mapped_column(String(24))
    action: Mapped[str] = mapped_column(String(16))
    norm_before: Mapped[float | None] = mapped_column(Float, default=None)
    norm_after: Mapped[float | None] = mapped_column(Float, default=None)
    share: Mapped[float | None] = mapped_column(Float, default=None)
    detail: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[Timestamp]

    participant: Mapped[Participant] = relationship()


class Exclusion(Base):
    """A node left out of a round, and why (refused to train, or its update was rejected)."""

    __tablename__ = "exclusions"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    round_number: Mapped[int] = mapped_column(Integer)
    participant_id: Mapped[int | None] = mapped_column(ForeignKey("participants.id"), default=None)
    node_id: Mapped[str] = mapped_column(String(20))
    code: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[Timestamp]

    participant: Mapped[Participant | None] = relationship()


class Suspension(Base):
    """An operator's decision on a member (ledger v13): ``suspended`` or ``reinstated``, and why.

    A member whose latest row says ``suspended`` is left out of every run
    started after it (:mod:`ledger.suspensions`); a run under way keeps its members.
    """

    __tablename__ = "suspensions"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[Timestamp]

    participant: Mapped[Participant] = relationship()


class Release(Base):
    """A released model (ledger v6): what was released, its card, and the signed head behind it.

    ``card_sha256`` is the SHA-256 of the model card's JSON bytes;
    ``checkpoint_tree_size`` and ``checkpoint_root`` name the signed tree
    head that covers the run's final round, which the card proves. (The
    columns keep their v6 names: release entries already signed state them.)
    """

    __tablename__ = "releases"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    model_sha256: Mapped[Sha256]
    card_sha256: Mapped[Sha256]
    checkpoint_tree_size: Mapped[int] = mapped_column(BigInteger)
    checkpoint_root: Mapped[Sha256]
    # Where the release was written (the operator's path).
    out: Mapped[str] = mapped_column(Text)
    created_at: Mapped[Timestamp]

    run: Mapped[Run] = relationship()


class Valuation(Base):
    """How one round's accepted updates were valued (ledger v10)."""

    __tablename__ = "valuations"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    round_number: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(16))
    utility: Mapped[str] = mapped_column(String(16))
    # Canonical JSON: the players (sorted), [[coalition bitmask, utility ppm], ...]
    # and GTG-Shapley's permutations (lists of player indices).
    players: Mapped[str] = mapped_column(Text)
    utilities: Mapped[str] = mapped_column(Text)
    permutations: Mapped[str] = mapped_column(Text)
    truncation: Mapped[int] = mapped_column(BigInteger)
    evaluations: Mapped[int] = mapped_column(Integer)
    gain: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[Timestamp]


class Contribution(Base):
    """One participant's value in one round, in parts per million of utility (ledger v10)."""

    __tablename__ = "contributions"

    id: Mapped[IntPk]
    entry_seq: Mapped[EntrySeq]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    round_number: Mapped[int] = mapped_column(Integer)
    valuation_id: Mapped[int] = mapped_column(ForeignKey("valuations.id"))
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    value: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[Timestamp]

    participant: Mapped[Participant] = relationship()


class ApiToken(Base):
    """A dashboard token: its name, the SHA-256 of its secret, and when it stops working."""

    __tablename__ = "api_tokens"

    id: Mapped[IntPk]
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

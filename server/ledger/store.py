"""Opening the ledger, migrating it, and the facts the server records.

Query and record functions take a :class:`~sqlalchemy.orm.Session` opened by
the caller (``with ledger.session() as s: ...``), so one short transaction
covers one fact.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.identity import EnrolmentRequest
from common.privacy import epsilon_for_json
from common.protocol import PrivacyCharge
from server.ledger.entries import append_entry, record_row, row_facts
from server.ledger.schema import (
    PARTICIPANT_KINDS,
    Charge,
    Dataset,
    Exclusion,
    Participant,
    Release,
    Round,
    RoundUpdate,
    Run,
    utcnow,
)

__all__ = [
    "ChargeFact",
    "ExclusionFact",
    "Ledger",
    "LedgerError",
    "UpdateFact",
    "admit_participant",
    "admitted_datasets",
    "admitted_keys",
    "enrol_participant",
    "finish_run",
    "ledger_report",
    "normalise_url",
    "privacy_spent",
    "record_exclusions",
    "record_privacy",
    "record_round",
    "refuse_admission",
    "start_run",
]

MIGRATIONS = Path(__file__).parent / "migrations"


class LedgerError(RuntimeError):
    """The ledger cannot be opened or a fact contradicts what it holds."""


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` and route it to the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise LedgerError(f"invalid ledger URL {url!r}: {err}") from err
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return parsed.render_as_string(hide_password=False)


class Ledger:
    """A migrated ledger database.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:///work/ledger.db`` or
        ``postgresql://user@host/db``.
    migrate : bool (default: True)
        Bring the schema up to date (Alembic ``upgrade head``) on open.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = normalise_url(url)
        self.engine: Engine = create_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
            f"ledger-session-{id(self)}", default=None
        )
        if migrate:
            self.upgrade()
        else:
            self._require_schema()

    def upgrade(self) -> None:
        """Apply every Alembic migration not yet applied."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except OperationalError as err:
            raise LedgerError(f"cannot open ledger {self.url}: {err.orig}") from err

    def _require_schema(self) -> None:
        parsed = make_url(self.url)
        database = parsed.database or ""
        is_file_db = parsed.drivername.startswith("sqlite") and database not in ("", ":memory:")
        if is_file_db and not Path(database).is_file():
            raise LedgerError(f"no ledger at {self.url}: the file does not exist")
        try:
            with self.engine.connect() as connection:
                found = inspect(connection).has_table("alembic_version")
        except OperationalError as err:
            raise LedgerError(f"cannot open ledger {self.url}: {err.orig}") from err
        if not found:
            raise LedgerError(f"{self.url} is not a FedCommons ledger (no schema version table)")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error.

        Re-entrant: a nested call joins the outer transaction.
        """
        outer = self._current.get()
        if outer is not None:
            yield outer
            return
        with self._sessions.begin() as session:
            token = self._current.set(session)
            try:
                yield session
            finally:
                self._current.reset(token)

    def close(self) -> None:
        self.engine.dispose()


def enrol_participant(session: Session, name: str, kind: str) -> Participant:
    """Add an institution, or return it unchanged if already enrolled with the same kind."""
    if kind not in PARTICIPANT_KINDS:
        raise LedgerError(
            f"participant kind must be one of {', '.join(PARTICIPANT_KINDS)}, got {kind!r}"
        )
    if not name or len(name) > 128:
        raise LedgerError(f"participant name must be 1-128 characters, got {name!r}")
    existing = session.scalar(select(Participant).where(Participant.name == name))
    if existing is not None:
        if existing.kind != kind:
            raise LedgerError(f"participant {name!r} is enrolled as {existing.kind}, not {kind}")
        return existing
    participant = Participant(name=name, kind=kind)
    record_row(session, participant, "participant")
    return participant


def admit_participant(
    session: Session, request: EnrolmentRequest, request_sha256: str
) -> Participant:
    """Record a verified enrolment request: the participant, its keys, its dataset and licence.

    Admitting the same request again changes nothing; a participant already
    admitted with another signing key is refused (a key change is not a
    re-enrolment), and so is one enrolled earlier as another kind.
    """
    participant = enrol_participant(session, request.institution, request.kind)
    before = row_facts(participant)
    if participant.public_key is not None and participant.public_key != request.signing_public_key:
        raise LedgerError(
            f"{request.institution!r} is already admitted with signing key "
            f"{participant.signing_key_id}; this request names {request.signing_key_id}"
        )
    participant.public_key = request.signing_public_key
    participant.signing_key_id = request.signing_key_id
    participant.supernode_public_key = request.supernode_public_key
    if participant.admitted_at is None:
        participant.admitted_at = utcnow()
    if row_facts(participant) != before:
        record_row(session, participant, "participant")
    manifest = request.dataset
    dataset = session.scalar(
        select(Dataset).where(
            Dataset.participant_id == participant.id, Dataset.sha256 == manifest["sha256"]
        )
    )
    if dataset is None:
        dataset = Dataset(
            participant_id=participant.id,
            sha256=manifest["sha256"],
            records=int(manifest["records"]),
            format=str(manifest.get("format", "")),
            schema_json=json.dumps(manifest["schema"], sort_keys=True),
            licence=request.licence_terms.id,
            licence_terms=json.dumps(request.licence, sort_keys=True),
            request_sha256=request_sha256,
        )
        record_row(session, dataset, "dataset")
    return participant


def refuse_admission(
    session: Session, request: EnrolmentRequest, request_sha256: str, reason: str
) -> None:
    """Record that a verified request was refused, and why (an entry, no participant row)."""
    append_entry(
        session,
        "admission-refused",
        {
            "institution": request.institution,
            "kind": request.kind,
            "dataset_sha256": request.dataset["sha256"],
            "licence": request.licence,
            "request_sha256": request_sha256,
            "reason": reason,
        },
    )


def admitted_datasets(session: Session) -> dict[tuple[str, str], dict[str, Any]]:
    """Licence terms of every admitted dataset, by (institution, dataset sha256)."""
    rows = session.scalars(select(Dataset).where(Dataset.licence_terms.is_not(None)))
    return {(d.participant.name, d.sha256): json.loads(str(d.licence_terms)) for d in rows}


def admitted_keys(session: Session) -> dict[str, str]:
    """Admitted participants and their signing keys (base64), by institution name."""
    rows = session.scalars(select(Participant).where(Participant.public_key.is_not(None)))
    return {p.name: str(p.public_key) for p in rows}


def start_run(
    session: Session,
    *,
    policy_sha256: str,
    policy_toml: str,
    model: str,
    dataset: str,
    initial_model_sha256: str,
    planned_rounds: int,
    flower_run_id: int | None,
    base_model_sha256: str | None = None,
) -> Run:
    """Open a run; ``flower_run_id`` links it to Flower's own run record."""
    run = Run(
        policy_sha256=policy_sha256,
        policy_toml=policy_toml,
        model=model,
        dataset=dataset,
        initial_model_sha256=initial_model_sha256,
        base_model_sha256=base_model_sha256,
        planned_rounds=planned_rounds,
        flower_run_id=None if flower_run_id is None else str(flower_run_id),
    )
    record_row(session, run, "run")
    return run


@dataclass(frozen=True)
class UpdateFact:
    """What the ledger keeps of one participant's update."""

    institution: str
    num_examples: int
    train_loss: float
    update_sha256: str
    update_bytes: int
    train_seconds: float
    ciphertext_sha256: str | None = None
    plaintext_sha256: str | None = None
    signature: str | None = None
    signer_key_id: str | None = None
    seal_seconds: float | None = None
    open_seconds: float | None = None


def record_round(
    session: Session,
    run_id: int,
    *,
    number: int,
    model_sha256_before: str,
    model_sha256_after: str,
    loss: float,
    accuracy: float,
    seconds: float,
    updates: list[UpdateFact],
) -> Round:
    """Append a completed round and one row per contributing participant."""
    run = session.get(Run, run_id)
    if run is None:
        raise LedgerError(f"run {run_id} is not in the ledger")
    last = session.scalar(select(func.max(Round.number)).where(Round.run_id == run_id)) or 0
    if number != last + 1:
        raise LedgerError(
            f"run {run_id}: round {number} follows round {last}; rounds must be consecutive"
        )
    total = sum(u.num_examples for u in updates)
    row = Round(
        run_id=run_id,
        number=number,
        model_sha256_before=model_sha256_before,
        model_sha256_after=model_sha256_after,
        loss=loss,
        accuracy=accuracy,
        train_loss=sum(u.train_loss * u.num_examples for u in updates) / max(total, 1),
        num_participants=len(updates),
        seconds=seconds,
    )
    record_row(session, row, "round")
    for fact in updates:
        values = asdict(fact)  # the row's columns are the fact's fields, bar the name
        name = values.pop("institution")
        update = RoundUpdate(
            round_id=row.id, participant_id=_participant(session, name, "update").id, **values
        )
        record_row(session, update, "update")
    return row


def _participant(session: Session, name: str, what: str) -> Participant:
    participant = session.scalar(select(Participant).where(Participant.name == name))
    if participant is None:
        raise LedgerError(f"{what} from {name!r}, who is not enrolled")
    return participant


@dataclass(frozen=True)
class ChargeFact:
    """One participant's privacy charge for one round, as its client reported it."""

    institution: str
    charge: PrivacyCharge


@dataclass(frozen=True)
class ExclusionFact:
    """A node left out of a round; ``institution`` is ``None`` if it never said who it is."""

    institution: str | None
    node_id: int
    code: int
    reason: str


def record_privacy(
    session: Session,
    run_id: int,
    round_number: int,
    *,
    charges: list[ChargeFact],
    exclusions: list[ExclusionFact],
) -> None:
    """Record a round's privacy charges and exclusions as soon as the replies are in."""
    for fact in charges:
        charge = Charge(
            run_id=run_id,
            round_number=round_number,
            participant_id=_participant(session, fact.institution, "privacy charge").id,
            **fact.charge.as_dict(),  # the row's columns are the charge's fields
        )
        record_row(session, charge, "privacy-charge")
    record_exclusions(session, run_id, round_number, exclusions)


def record_exclusions(
    session: Session, run_id: int, round_number: int, exclusions: list[ExclusionFact]
) -> None:
    """Record nodes left out of a round with their reasons."""
    for fact in exclusions:
        participant = (
            session.scalar(select(Participant).where(Participant.name == fact.institution))
            if fact.institution
            else None
        )
        reason = fact.reason
        if fact.institution and participant is None:
            reason = f"(claims to be {fact.institution!r}, not enrolled) {reason}"
        exclusion = Exclusion(
            run_id=run_id,
            round_number=round_number,
            participant_id=participant.id if participant else None,
            node_id=str(fact.node_id),
            code=fact.code,
            reason=reason,
        )
        record_row(session, exclusion, "exclusion")


def privacy_spent(session: Session) -> list[dict[str, Any]]:
    """Cumulative epsilon per (institution, dataset): the latest charge's figure."""
    charges = session.scalars(select(Charge).order_by(Charge.id)).all()
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for c in charges:
        key = (c.participant.name, c.dataset_sha256)
        rounds = latest.get(key, {}).get("rounds_charged", 0) + 1
        latest[key] = {
            "institution": c.participant.name,
            "dataset_sha256": c.dataset_sha256,
            "dp": c.dp,
            "epsilon": epsilon_for_json(c.epsilon),
            "delta": c.delta,
            "accountant": c.accountant,
            "rounds_charged": rounds,
            "last_run_id": c.run_id,
        }
    return sorted(latest.values(), key=lambda row: (row["institution"], row["dataset_sha256"]))


RUN_STATUSES = ("running", "finished", "failed")


def finish_run(
    session: Session,
    run_id: int,
    status: str,
    *,
    test_accuracy: float | None = None,
    test_loss: float | None = None,
    reason: str | None = None,
) -> None:
    """Close a run with its final status, its test metrics if it finished, or why it stopped."""
    if status not in RUN_STATUSES[1:]:
        raise LedgerError(f"a run ends as finished or failed, not {status!r}")
    run = session.get(Run, run_id)
    if run is None:
        raise LedgerError(f"run {run_id} is not in the ledger")
    run.status = status
    run.ended_at = utcnow()
    run.test_accuracy = test_accuracy
    run.test_loss = test_loss
    run.status_reason = reason
    record_row(session, run, "run")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def ledger_report(session: Session) -> dict[str, Any]:
    """Everything an auditor sees, as plain JSON-ready data."""
    participants = session.scalars(select(Participant).order_by(Participant.id)).all()
    runs = session.scalars(select(Run).order_by(Run.id)).all()
    charges: dict[tuple[int, int], list[Charge]] = {}
    for c in session.scalars(select(Charge).order_by(Charge.id)):
        charges.setdefault((c.run_id, c.round_number), []).append(c)
    exclusions: dict[int, list[Exclusion]] = {}
    for e in session.scalars(select(Exclusion).order_by(Exclusion.id)):
        exclusions.setdefault(e.run_id, []).append(e)
    releases: dict[int, list[Release]] = {}
    for release in session.scalars(select(Release).order_by(Release.id)):
        releases.setdefault(release.run_id, []).append(release)
    return {
        "privacy": privacy_spent(session),
        "participants": [
            {
                "name": p.name,
                "kind": p.kind,
                "enrolled_at": _iso(p.enrolled_at),
                "admitted_at": _iso(p.admitted_at),
                "signing_key_id": p.signing_key_id,
                "public_key": p.public_key,
                "supernode_public_key": p.supernode_public_key,
                "datasets": [
                    {
                        "sha256": d.sha256,
                        "records": d.records,
                        "format": d.format,
                        "schema": json.loads(d.schema_json),
                        "licence": d.licence,
                        "licence_terms": json.loads(d.licence_terms) if d.licence_terms else None,
                        "request_sha256": d.request_sha256,
                    }
                    for d in p.datasets
                ],
            }
            for p in participants
        ],
        "runs": [
            {
                "id": run.id,
                "flower_run_id": run.flower_run_id,
                "status": run.status,
                "model": run.model,
                "dataset": run.dataset,
                "policy_sha256": run.policy_sha256,
                "initial_model_sha256": run.initial_model_sha256,
                "base_model_sha256": run.base_model_sha256,
                "planned_rounds": run.planned_rounds,
                "test_accuracy": run.test_accuracy,
                "test_loss": run.test_loss,
                "started_at": _iso(run.started_at),
                "ended_at": _iso(run.ended_at),
                "status_reason": run.status_reason,
                "exclusions": [
                    {
                        "round": e.round_number,
                        "institution": e.participant.name if e.participant else None,
                        "node_id": e.node_id,
                        "code": e.code,
                        "reason": e.reason,
                    }
                    for e in exclusions.get(run.id, [])
                ],
                "privacy_charges": [
                    {
                        "round": c.round_number,
                        "institution": c.participant.name,
                        "dataset_sha256": c.dataset_sha256,
                        "dp": c.dp,
                        "epsilon": epsilon_for_json(c.epsilon),
                        "delta": c.delta,
                        "noise_multiplier": c.noise_multiplier,
                        "sample_rate": c.sample_rate,
                        "steps": c.steps,
                        "accountant": c.accountant,
                        "max_grad_norm": c.max_grad_norm,
                        "history_sha256": c.history_sha256,
                    }
                    for (run_id, _), round_charges in sorted(charges.items())
                    if run_id == run.id
                    for c in sorted(round_charges, key=lambda c: c.participant.name)
                ],
                "rounds": [
                    {
                        "round": r.number,
                        "accuracy": r.accuracy,
                        "loss": r.loss,
                        "train_loss": r.train_loss,
                        "participants": r.num_participants,
                        "seconds": r.seconds,
                        "model_sha256_before": r.model_sha256_before,
                        "model_sha256_after": r.model_sha256_after,
                        "updates": [
                            {
                                "institution": u.participant.name,
                                "num_examples": u.num_examples,
                                "train_loss": u.train_loss,
                                "update_sha256": u.update_sha256,
                                "update_bytes": u.update_bytes,
                                "train_seconds": u.train_seconds,
                                "ciphertext_sha256": u.ciphertext_sha256,
                                "plaintext_sha256": u.plaintext_sha256,
                                "signature": u.signature,
                                "signer_key_id": u.signer_key_id,
                                "seal_seconds": u.seal_seconds,
                                "open_seconds": u.open_seconds,
                            }
                            for u in sorted(r.updates, key=lambda u: u.participant.name)
                        ],
                    }
                    for r in run.rounds
                ],
                "releases": [
                    {
                        "model_sha256": r.model_sha256,
                        "card_sha256": r.card_sha256,
                        "checkpoint_tree_size": r.checkpoint_tree_size,
                        "checkpoint_root": r.checkpoint_root,
                        "out": r.out,
                        "created_at": _iso(r.created_at),
                    }
                    for r in releases.get(run.id, [])
                ],
            }
            for run in runs
        ],
    }

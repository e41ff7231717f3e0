"""The facts the server records: participants, admissions, runs, rounds, charges, exclusions.

Each function takes the caller's session and records one fact as a row and
its ledger entry (:func:`ledger.entries.record_row`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.consortium import EnrolmentRequest
from common.protocol import PrivacyCharge
from ledger.entries import append_entry, record_row, row_facts
from ledger.schema import (
    PARTICIPANT_KINDS,
    Charge,
    Dataset,
    Defence,
    Exclusion,
    Participant,
    Round,
    RoundUpdate,
    Run,
    utcnow,
)
from ledger.store import LedgerError

__all__ = [
    "SUSPECTED",
    "ChargeFact",
    "DefenceFact",
    "ExclusionFact",
    "UpdateFact",
    "admit_participant",
    "admitted_datasets",
    "admitted_keys",
    "admitted_records",
    "enrol_participant",
    "record_defences",
    "record_exclusions",
    "record_privacy",
    "record_round",
    "refuse_admission",
]


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


def admitted_records(session: Session) -> dict[tuple[str, str], int]:
    """Record count of every admitted dataset, from its manifest, by (institution, sha256)."""
    rows = session.scalars(select(Dataset).where(Dataset.licence_terms.is_not(None)))
    return {(d.participant.name, d.sha256): int(d.records) for d in rows}


def admitted_keys(session: Session) -> dict[str, str]:
    """Admitted participants and their signing keys (base64), by institution name."""
    rows = session.scalars(select(Participant).where(Participant.public_key.is_not(None)))
    return {p.name: str(p.public_key) for p in rows}


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


SUSPECTED = "suspected"
"""A defence entry's action when it records collusion evidence, not something done."""


@dataclass(frozen=True)
class DefenceFact:
    """What a defence did to one accepted update (see :class:`~ledger.schema.Defence`)."""

    institution: str
    rule: str
    action: str
    detail: str
    norm_before: float | None = None
    norm_after: float | None = None
    share: float | None = None


def record_defences(
    session: Session, run_id: int, round_number: int, defences: list[DefenceFact]
) -> None:
    """Record what the round's defences did, one entry per update they touched."""
    for fact in defences:
        row = Defence(
            run_id=run_id,
            round_number=round_number,
            participant_id=_participant(session, fact.institution, "defence").id,
            rule=fact.rule,
            action=fact.action,
            norm_before=fact.norm_before,
            norm_after=fact.norm_after,
            share=fact.share,
            detail=fact.detail,
        )
        record_row(session, row, "defence")


def record_privacy(
    session: Session,
    run_id: int,
    round_number: int,
    *,
    charges: list[ChargeFact],
    exclusions: list[ExclusionFact],
) -> None:
    """Record a round's privacy charges and exclusions as soon as the replies are in.

    A charge already recorded (the same run, round, participant and
    accountant history: the same spend, seen again when a write is retried
    or a round is recovered after a crash) is not recorded twice.
    """
    for fact in charges:
        participant_id = _participant(session, fact.institution, "privacy charge").id
        fields = fact.charge.as_dict()  # the row's columns are the charge's fields
        if _charged(session, run_id, round_number, participant_id, fields["history_sha256"]):
            continue
        charge = Charge(
            run_id=run_id, round_number=round_number, participant_id=participant_id, **fields
        )
        record_row(session, charge, "privacy-charge")
    record_exclusions(session, run_id, round_number, exclusions)


def _charged(
    session: Session, run_id: int, round_number: int, participant_id: int, history_sha256: object
) -> bool:
    found = session.scalar(
        select(Charge.id).where(
            Charge.run_id == run_id,
            Charge.round_number == round_number,
            Charge.participant_id == participant_id,
            Charge.history_sha256 == history_sha256,
        )
    )
    return found is not None


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
            code=int(fact.code),
            reason=reason,
        )
        record_row(session, exclusion, "exclusion")

"""What an auditor reads: the ledger's facts as plain, JSON-ready data."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload

from common.epsilon import epsilon_for_json
from ledger.schema import (
    Charge,
    Defence,
    Exclusion,
    FlowerRun,
    Participant,
    Release,
    Round,
    RoundUpdate,
    Run,
)
from ledger.suspensions import in_force, suspension_history

__all__ = ["exclusion_doc", "ledger_report", "privacy_spent"]


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


def _carried(flower_run_id: str | None, first_round: int, at: datetime) -> dict[str, Any]:
    return {"flower_run_id": flower_run_id, "first_round": first_round, "started_at": _iso(at)}


def exclusion_doc(e: Exclusion) -> dict[str, Any]:
    """One exclusion as reports and model cards show it."""
    return {
        "round": e.round_number,
        "institution": e.participant.name if e.participant else None,
        "node_id": e.node_id,
        "code": e.code,
        "reason": e.reason,
    }


def _lean_rounds_and_charges(
    session: Session, run_ids: list[int]
) -> tuple[dict[int, list[dict[str, Any]]], dict[int, list[dict[str, Any]]]]:
    """Each run's rounds (updates as institutions) and charges, read as plain rows."""
    names: dict[int, list[str]] = {}
    for round_id, name in session.execute(
        select(RoundUpdate.round_id, Participant.name)
        .join(Participant, Participant.id == RoundUpdate.participant_id)
        .join(Round, Round.id == RoundUpdate.round_id)
        .where(Round.run_id.in_(run_ids))
    ):
        names.setdefault(round_id, []).append(name)
    rounds: dict[int, list[dict[str, Any]]] = {}
    for r in session.execute(
        select(Round.id, Round.run_id, Round.number, Round.accuracy, Round.loss,
               Round.model_sha256_after)
        .where(Round.run_id.in_(run_ids))
        .order_by(Round.run_id, Round.number)
    ):  # fmt: skip
        rounds.setdefault(r.run_id, []).append(
            {"round": r.number, "accuracy": r.accuracy, "loss": r.loss,
             "model_sha256_after": r.model_sha256_after,
             "updates": [{"institution": n} for n in sorted(names.get(r.id, []))]}
        )  # fmt: skip
    charges: dict[int, list[dict[str, Any]]] = {}
    for run_id, number, name, epsilon in session.execute(
        select(Charge.run_id, Charge.round_number, Participant.name, Charge.epsilon)
        .join(Participant, Participant.id == Charge.participant_id)
        .where(Charge.run_id.in_(run_ids))
        .order_by(Charge.run_id, Charge.round_number, Participant.name, Charge.id)
    ):
        charges.setdefault(run_id, []).append(
            {"round": number, "institution": name, "epsilon": epsilon_for_json(epsilon)}
        )
    return rounds, charges


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def ledger_report(
    session: Session, run_id: int | None = None, *, light: bool = False
) -> dict[str, Any]:
    """Everything an auditor sees, as plain JSON-ready data.

    With ``run_id``, only that run (and no cumulative ``privacy`` summary,
    which spans every run): what the dashboard's run page reads. ``light``
    gives each round's updates as their institutions only and each privacy
    charge as its round, institution and epsilon, read as plain rows.
    """

    def only(table: Any, column: Any) -> Any:
        query = select(table)
        return query.where(column == run_id) if run_id is not None else query

    participants = session.scalars(select(Participant).order_by(Participant.id)).all()
    suspended = in_force(session)
    # Each row's participant (and each run's rounds and updates) loaded with it,
    # in a few queries, rather than one attribute load per row.
    runs = session.scalars(
        only(Run, Run.id)
        .options(
            selectinload(Run.rounds).selectinload(Round.updates).joinedload(RoundUpdate.participant)
        )
        .order_by(Run.id)
        if not light
        else only(Run, Run.id).order_by(Run.id)
    ).all()
    charges: dict[tuple[int, int], list[Charge]] = {}
    charge_rows = (
        session.scalars(
            only(Charge, Charge.run_id).options(joinedload(Charge.participant)).order_by(Charge.id)
        )
        if not light
        else ()  # read as plain rows by _lean_rounds_and_charges
    )
    for c in charge_rows:
        charges.setdefault((c.run_id, c.round_number), []).append(c)
    lean = _lean_rounds_and_charges(session, [r.id for r in runs]) if light else None
    exclusions: dict[int, list[Exclusion]] = {}
    for e in session.scalars(
        only(Exclusion, Exclusion.run_id)
        .options(joinedload(Exclusion.participant))
        .order_by(Exclusion.id)
    ):
        exclusions.setdefault(e.run_id, []).append(e)
    defences: dict[int, list[Defence]] = {}
    for defence in session.scalars(
        only(Defence, Defence.run_id).options(joinedload(Defence.participant)).order_by(Defence.id)
    ):
        defences.setdefault(defence.run_id, []).append(defence)
    carried: dict[int, list[FlowerRun]] = {}
    for flower_run in session.scalars(only(FlowerRun, FlowerRun.run_id).order_by(FlowerRun.id)):
        carried.setdefault(flower_run.run_id, []).append(flower_run)
    releases: dict[int, list[Release]] = {}
    for release in session.scalars(only(Release, Release.run_id).order_by(Release.id)):
        releases.setdefault(release.run_id, []).append(release)
    return {
        "privacy": privacy_spent(session) if run_id is None else [],
        "suspensions": suspension_history(session),
        "participants": [
            {
                "name": p.name,
                "kind": p.kind,
                "enrolled_at": _iso(p.enrolled_at),
                "admitted_at": _iso(p.admitted_at),
                "signing_key_id": p.signing_key_id,
                "public_key": p.public_key,
                "supernode_public_key": p.supernode_public_key,
                "suspended": p.name in suspended,
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
                "flower_runs": [
                    _carried(run.flower_run_id, 1, run.started_at),
                    *(
                        _carried(f.flower_run_id, f.first_round, f.started_at)
                        for f in carried.get(run.id, [])
                    ),
                ],
                "exclusions": [exclusion_doc(e) for e in exclusions.get(run.id, [])],
                "defences": [
                    {
                        "round": d.round_number,
                        "institution": d.participant.name,
                        "rule": d.rule,
                        "action": d.action,
                        "norm_before": d.norm_before,
                        "norm_after": d.norm_after,
                        "share": d.share,
                        "detail": d.detail,
                    }
                    for d in defences.get(run.id, [])
                ],
                "privacy_charges": lean[1].get(run.id, [])
                if lean is not None
                else [
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
                "rounds": lean[0].get(run.id, [])
                if lean is not None
                else [
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

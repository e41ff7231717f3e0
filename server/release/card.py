"""A release's model card, built from the ledger: provenance, obligations, privacy.

Only institutions with an accepted update in the run are contributors: their
datasets (as their privacy charges name them) are the model's provenance,
and their licences make up its obligations (:func:`common.licences.obligations`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.epsilon import epsilon_for_json
from common.errors import UserError
from common.licences import PURPOSES, SPDX, Licence, LicenceError, obligations
from common.policy import Policy
from ledger.contributions import contributions_report
from ledger.report import exclusion_doc
from ledger.runs import flower_runs
from ledger.schema import (
    Charge,
    Dataset,
    Exclusion,
    Participant,
    Round,
    RoundUpdate,
    Run,
    utcnow,
)
from server.release.model_card import CARD_FORMAT, MODEL_FILE

__all__ = ["ReleaseError", "build_card"]


class ReleaseError(UserError, ValueError):
    """A run that cannot be released, or a folder a release cannot be written to."""


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _licence(dataset: Dataset) -> Licence:
    if dataset.licence_terms:
        try:
            return Licence.from_dict(json.loads(dataset.licence_terms))
        except (ValueError, LicenceError) as err:
            raise ReleaseError(
                f"{dataset.participant.name}'s dataset {dataset.sha256[:12]}: {err}"
            ) from None
    if dataset.licence in SPDX:  # recorded before licences had structured terms
        return SPDX[dataset.licence]
    raise ReleaseError(
        f"{dataset.participant.name}'s dataset {dataset.sha256[:12]} has no licence terms in "
        f"the ledger ({dataset.licence!r}): the model's obligations cannot be stated"
    )


def _charges(
    session: Session, run: Run
) -> tuple[dict[int, list[int]], dict[tuple[int, str], Charge], list[dict[str, Any]]]:
    """Each contributor's rounds, its datasets' last charges, and the card's privacy rows.

    Every charge counts, also for a round the model did not use (a round that
    failed on the server, or one trained again after a crash): the member
    spent it, so a dataset's epsilon is its last charge in the run, and the
    rounds charged but unused are named.
    """
    rounds_of: dict[int, list[int]] = defaultdict(list)  # participant id -> its rounds
    for participant_id, number in session.execute(
        select(RoundUpdate.participant_id, Round.number)
        .join(Round, Round.id == RoundUpdate.round_id)
        .where(Round.run_id == run.id)
        .order_by(Round.number)
    ):
        rounds_of[participant_id].append(number)
    latest: dict[tuple[int, str], Charge] = {}  # (participant id, dataset) -> last charge
    charged: dict[tuple[int, str], int] = defaultdict(int)
    unused: dict[tuple[int, str], list[int]] = defaultdict(list)
    per_round: dict[tuple[tuple[int, str], int], int] = defaultdict(int)
    for charge in session.scalars(
        select(Charge).where(Charge.run_id == run.id).order_by(Charge.round_number, Charge.id)
    ):
        key = (charge.participant_id, charge.dataset_sha256)
        if charge.participant_id not in rounds_of:
            continue  # none of its updates is in the model: not a contributor
        latest[key] = charge
        charged[key] += 1
        per_round[key, charge.round_number] += 1
    for (key, number), count in sorted(per_round.items()):
        used = 1 if number in rounds_of[key[0]] else 0  # a redone round: its last charge
        unused[key] += [number] * (count - used)
    privacy = [
        {
            "institution": charge.participant.name,
            "dataset_sha256": charge.dataset_sha256,
            "dp": charge.dp,
            "epsilon": epsilon_for_json(charge.epsilon),
            "delta": charge.delta,
            "accountant": charge.accountant,
            "rounds_charged": charged[key],
            "rounds_charged_unused": unused[key],
        }
        for key, charge in sorted(latest.items(), key=lambda kv: (kv[1].participant.name, kv[0]))
    ]
    return rounds_of, latest, privacy


def privacy_rows(session: Session, run: Run) -> list[dict[str, Any]]:
    """The card's privacy rows (see :func:`_charges`)."""
    return _charges(session, run)[2]


def _contributors(
    session: Session, run: Run
) -> tuple[list[dict[str, Any]], list[tuple[str, Licence]], list[dict[str, Any]]]:
    """Who contributed (an accepted update), with which datasets and licences, at what ε.

    A contributor's datasets are those its privacy charges name for the
    rounds its updates were accepted in, keyed like the strategy's licence
    check: by (institution, dataset sha256).

    Returns
    -------
    tuple
        The card's contributors, ``(institution, licence)`` per dataset, and
        the card's privacy rows (each dataset's last charge in the run).
    """
    rounds_of, latest, privacy = _charges(session, run)
    contributors: list[dict[str, Any]] = []
    contributions: list[tuple[str, Licence]] = []
    for participant_id, numbers in sorted(rounds_of.items()):
        participant = session.get(Participant, participant_id)
        if participant is None:  # the foreign key makes this impossible
            raise ReleaseError(f"run {run.id} names participant {participant_id}, who is gone")
        datasets = []
        for pid, sha256 in sorted(k for k in latest if k[0] == participant_id):
            dataset = session.scalar(
                select(Dataset).where(Dataset.participant_id == pid, Dataset.sha256 == sha256)
            )
            if dataset is None:
                raise ReleaseError(
                    f"{participant.name} trained on dataset {sha256[:12]}, which was never "
                    "admitted: its licence is unknown"
                )
            licence = _licence(dataset)
            contributions.append((participant.name, licence))
            datasets.append(
                {
                    "sha256": dataset.sha256,
                    "records": dataset.records,
                    "format": dataset.format,
                    "licence": licence.id,
                    "licence_terms": licence.to_dict(),
                    "request_sha256": dataset.request_sha256,
                }
            )
        if not datasets:
            raise ReleaseError(
                f"{participant.name} contributed to run {run.id} but no privacy charge names "
                "the dataset it trained on: the model's provenance is unknown"
            )
        contributors.append(
            {
                "institution": participant.name,
                "kind": participant.kind,
                "signing_key_id": participant.signing_key_id,
                "rounds": numbers,
                "datasets": datasets,
            }
        )
    return contributors, contributions, privacy


def _obligations(contributions: list[tuple[str, Licence]]) -> dict[str, Any]:
    """The combined terms of every contributing dataset (:func:`common.licences.obligations`)."""
    owed = obligations(contributions)
    expiries = [lic.expires for _, lic in contributions if lic.expires is not None]
    first_expiry: date | None = min(expiries) if expiries else None
    return {
        "attribution": list(owed.attribution),
        "non_commercial": owed.non_commercial,
        "non_commercial_from": [
            f"{name} ({lic.id})" for name, lic in contributions if not lic.commercial
        ],
        "share_alike": list(owed.share_alike),
        "share_alike_from": [
            f"{name} ({lic.id})" for name, lic in contributions if lic.share_alike
        ],
        # what every contributing licence allows
        "purposes": [p for p in PURPOSES if all(p in lic.purposes for _, lic in contributions)],
        "expires": first_expiry.isoformat() if first_expiry else None,
    }


def build_card(
    session: Session, run: Run, policy: Policy, last: Round, proof: dict[str, Any]
) -> dict[str, Any]:
    """The model card as JSON-ready data (the model file's sha256 is added by the caller).

    ``proof`` is the final round's entry, the signed tree head covering it and
    the inclusion proof (:func:`server.release.release.release_model` builds it).
    """
    contributors, contributions, privacy = _contributors(session, run)
    exclusions = session.scalars(
        select(Exclusion).where(Exclusion.run_id == run.id).order_by(Exclusion.id)
    ).all()
    return {
        "format": CARD_FORMAT,
        "released_at": utcnow().isoformat(timespec="seconds"),
        "run": {
            "id": run.id,
            "flower_run_id": run.flower_run_id,
            "flower_runs": [  # more than one when the run was resumed
                {"flower_run_id": flower_id, "first_round": first}
                for flower_id, first in flower_runs(session, run.id)
            ],
            "model": run.model,
            "dataset": run.dataset,
            "purpose": policy.federation.purpose,
            "policy_sha256": run.policy_sha256,
            "rounds": last.number,
            "planned_rounds": run.planned_rounds,
            "started_at": run.started_at.isoformat(),
            "ended_at": run.ended_at.isoformat() if run.ended_at else None,
            "test_accuracy": _finite(run.test_accuracy),
            "test_loss": _finite(run.test_loss),
        },
        "model": {
            "file": MODEL_FILE,
            "sha256": last.model_sha256_after,
            "round": last.number,
            "initial_sha256": run.initial_model_sha256,
            "base_sha256": run.base_model_sha256,
        },
        "contributors": contributors,
        "obligations": _obligations(contributions),
        "privacy": privacy,
        "rounds": [
            {
                "round": r.number,
                "participants": sorted(u.participant.name for u in r.updates),
                "accuracy": _finite(r.accuracy),
                "loss": _finite(r.loss),
                "model_sha256_after": r.model_sha256_after,
            }
            for r in run.rounds
        ],
        "exclusions": [exclusion_doc(e) for e in exclusions],
        "contributions": _contribution_shares(session, run.id),
        "ledger": proof,
    }


def _contribution_shares(session: Session, run_id: int) -> dict[str, Any]:
    """Cumulative values and shares by institution and kind (empty if no round was valued)."""
    (report,) = contributions_report(session, run_id=run_id)
    return {
        "rounds_valued": len(report["rounds"]),
        "methods": sorted({r["method"] for r in report["rounds"]}),
        "institutions": report["institutions"],
        "kinds": report["kinds"],
    }

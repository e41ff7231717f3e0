"""A run's provenance as the ledger records it: contributors, their licences, their ε.

Only institutions with an accepted update in the run are contributors: their
datasets (as their privacy charges name them) are the model's provenance,
and their licences make up its obligations (:func:`common.licences.obligations`).
The release's model card (:mod:`server.release.card`) states these, and the
card check (:mod:`audit.card_ledger`) recomputes them: one implementation,
so that the two agree unless the card was edited.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.epsilon import epsilon_for_json
from common.errors import UserError
from common.licences import PURPOSES, SPDX, Licence, LicenceError, obligations
from ledger.schema import Charge, Dataset, Participant, Round, RoundUpdate, Run

__all__ = [
    "ProvenanceError",
    "charges",
    "contributors",
    "licence_of",
    "obligations_doc",
    "privacy_rows",
]


class ProvenanceError(UserError, ValueError):
    """A run whose provenance the ledger cannot state (a dataset or licence it lacks)."""


def licence_of(dataset: Dataset) -> Licence:
    if dataset.licence_terms:
        try:
            return Licence.from_dict(json.loads(dataset.licence_terms))
        except (ValueError, LicenceError) as err:
            raise ProvenanceError(
                f"{dataset.participant.name}'s dataset {dataset.sha256[:12]}: {err}"
            ) from None
    if dataset.licence in SPDX:  # recorded before licences had structured terms
        return SPDX[dataset.licence]
    raise ProvenanceError(
        f"{dataset.participant.name}'s dataset {dataset.sha256[:12]} has no licence terms in "
        f"the ledger ({dataset.licence!r}): the model's obligations cannot be stated"
    )


def charges(
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
    """The card's privacy rows (see :func:`charges`)."""
    return charges(session, run)[2]


def contributors(
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
    rounds_of, latest, privacy = charges(session, run)
    contributors: list[dict[str, Any]] = []
    contributions: list[tuple[str, Licence]] = []
    for participant_id, numbers in sorted(rounds_of.items()):
        participant = session.get(Participant, participant_id)
        if participant is None:  # the foreign key makes this impossible
            raise ProvenanceError(f"run {run.id} names participant {participant_id}, who is gone")
        datasets = []
        for pid, sha256 in sorted(k for k in latest if k[0] == participant_id):
            dataset = session.scalar(
                select(Dataset).where(Dataset.participant_id == pid, Dataset.sha256 == sha256)
            )
            if dataset is None:
                raise ProvenanceError(
                    f"{participant.name} trained on dataset {sha256[:12]}, which was never "
                    "admitted: its licence is unknown"
                )
            licence = licence_of(dataset)
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
            raise ProvenanceError(
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


def obligations_doc(contributions: list[tuple[str, Licence]]) -> dict[str, Any]:
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

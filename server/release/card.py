"""A release's model card, built from the ledger: provenance, obligations, privacy.

What the ledger records about the run's contributors, their licences and
their ε comes from :mod:`ledger.provenance`, which the card check
(:mod:`audit.card_ledger`) recomputes with. The card's ``ledger`` proof
(:func:`server.release.release.release_model`) proves each round it lists.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import UserError
from common.policy import Policy
from ledger.contributions import contributions_report
from ledger.provenance import ProvenanceError, contributors, obligations_doc
from ledger.report import exclusion_doc
from ledger.runs import flower_runs
from ledger.schema import Exclusion, Round, Run, utcnow
from server.release.model_card import CARD_FORMAT, MODEL_FILE

__all__ = ["ReleaseError", "build_card"]


class ReleaseError(UserError, ValueError):
    """A run that cannot be released, or a folder a release cannot be written to."""


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def build_card(
    session: Session, run: Run, policy: Policy, last: Round, proof: dict[str, Any]
) -> dict[str, Any]:
    """The model card as JSON-ready data (the model file's sha256 is added by the caller).

    ``proof`` is the final round's entry, the signed tree head covering it and
    the inclusion proof (:func:`server.release.release.release_model` builds it).
    """
    try:
        named, contributions, privacy = contributors(session, run)
    except ProvenanceError as err:
        raise ReleaseError(str(err)) from None
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
        "contributors": named,
        "obligations": obligations_doc(contributions),
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

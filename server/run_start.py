"""Opening a run in the ledger when a ServerApp starts: a new one, or one to resume.

A run marked ``resuming`` with the same policy is taken over (and checked:
its last recorded round's snapshot must be the model the ledger holds);
otherwise a new run is started. Either way the ServerApp also learns what it
needs from the ledger: the admitted participants' keys, their licences, and
every update ciphertext already accepted (the gate's replay memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from common.arrays import Arrays, arrays_sha256
from common.keys import decode_ed25519_public
from common.licences import Licence
from common.policy import Policy
from server.deploy import DeployConfig
from server.ledger import (
    Ledger,
    admitted_datasets,
    admitted_keys,
    admitted_records,
    start_run,
)
from server.ledger.runs import take_over_resume
from server.ledger.schema import RoundUpdate
from server.resume import ResumeError, ResumePoint, resume_point

__all__ = ["OpenedRun", "open_run"]


@dataclass(frozen=True)
class OpenedRun:
    """What the ServerApp starts from."""

    run_id: int
    point: ResumePoint
    """Where training goes on from (round 0 and the initial model for a new run)."""
    participants: dict[str, Ed25519PublicKey]
    licences: dict[tuple[str, str], Licence]
    records: dict[tuple[str, str], int]
    """Each admitted dataset's record count: no update may claim more examples."""
    accepted_before: set[str]
    """Ciphertext hashes of every update the ledger holds."""


def open_run(
    ledger: Ledger,
    policy: Policy,
    deploy: DeployConfig,
    *,
    flower_run_id: int,
    initial: Arrays,
    base_sha256: str,
) -> OpenedRun:
    """Take over the run waiting to resume with ``policy``, or start a new one.

    Raises
    ------
    ResumeError
        The run to resume no longer checks (its snapshot is gone or changed,
        or the initial model differs); it stays ``resuming``.
    """
    with ledger.session() as session:
        participants = {
            name: decode_ed25519_public(key, f"{name}'s signing key in the ledger")
            for name, key in admitted_keys(session).items()
        }
        licences = {
            key: Licence.from_dict(terms) for key, terms in admitted_datasets(session).items()
        }
        records = admitted_records(session)
        accepted = {
            str(digest)
            for digest in session.scalars(select(RoundUpdate.ciphertext_sha256))
            if digest is not None
        }
        run = take_over_resume(session, policy.sha256(), flower_run_id)
        if run is not None:
            point = resume_point(run, deploy.snapshot_dir)
            if point.weights is None and arrays_sha256(initial) != run.initial_model_sha256:
                raise ResumeError(
                    f"run {run.id} cannot resume: its initial model was "
                    f"{run.initial_model_sha256[:16]}..., this build gives "
                    f"{arrays_sha256(initial)[:16]}..."
                )
            run_id = run.id
        else:
            run_id = start_run(
                session,
                policy_sha256=policy.sha256(),
                policy_toml=policy.to_toml(),
                model=policy.model.name,
                dataset=policy.data.dataset,
                initial_model_sha256=arrays_sha256(initial),
                base_model_sha256=base_sha256,
                planned_rounds=policy.federation.rounds,
                flower_run_id=flower_run_id,
            ).id
            point = ResumePoint(run_id, 0, None, {}, arrays_sha256(initial))
    return OpenedRun(
        run_id=run_id,
        point=point,
        participants=participants,
        licences=licences,
        records=records,
        accepted_before=accepted,
    )

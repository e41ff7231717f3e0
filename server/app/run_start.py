"""Opening a run in the ledger when a ServerApp starts: a new one, or one to resume.

A run marked ``resuming`` with the same policy is taken over (and checked:
its last recorded round's snapshot must be the model the ledger holds);
otherwise a new run is started. Either way the ServerApp also learns what it
needs from the ledger: the admitted participants' keys, their licences, and
every update ciphertext already accepted (the gate's replay memory).

A member suspended when the run started (:mod:`ledger.suspensions`) is not
among its participants: the gate refuses its updates and the run's
``run-members`` entry leaves it out. A suspension recorded after the run
started does not change it, also when it is resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from common.arrays import Arrays, arrays_sha256
from common.keys import decode_ed25519_public
from common.licences import Licence
from common.policy import Policy
from ledger import (
    Ledger,
    admitted_datasets,
    admitted_keys,
    admitted_records,
    start_run,
)
from ledger.members import members_entry
from ledger.runs import flower_runs, take_over_resume
from ledger.schema import RoundUpdate, Suspension
from ledger.suspensions import in_force
from server.app.resume import ResumeError, ResumePoint, resume_point
from server.app.snapshots import KeptReply, SnapshotError, kept_replies
from server.deploy import DeployConfig

__all__ = ["OpenedRun", "Recovery", "open_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedRun:
    """What the ServerApp starts from."""

    run_id: int
    point: ResumePoint
    """Where training goes on from (round 0 and the initial model for a new run)."""
    participants: dict[str, Ed25519PublicKey]
    """The run's participants: admitted, and not suspended when the run started."""
    licences: dict[tuple[str, str], Licence]
    records: dict[tuple[str, str], int]
    """Each admitted dataset's record count: no update may claim more examples."""
    accepted_before: set[str]
    """Ciphertext hashes of every update the ledger holds."""
    recovery: Recovery | None = None
    """The round a crashed run left unrecorded, to finish from the replies it kept."""
    admitted: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    """Every admitted participant's key, the suspended included: what a member spent
    in an earlier run and reports as owed is its spend all the same."""
    left_out: dict[str, str] = field(default_factory=dict)
    """The suspended members this run leaves out, and why (institution: reason)."""


@dataclass(frozen=True)
class Recovery:
    """A round whose replies a crashed ServerApp accepted and kept, but never recorded."""

    replies: dict[str, KeptReply]
    carrier: str
    """The Flower run that carried the round (its updates are bound to it)."""


def _recoverable(snapshot_dir: Path, server_round: int, quorum: int) -> dict[str, KeptReply]:
    """The replies kept for ``server_round`` if there are enough to finish it; else none."""
    try:
        replies = kept_replies(snapshot_dir, server_round)
    except SnapshotError as err:
        log.warning("round %d is trained again: %s", server_round, err)
        return {}
    return replies if len(replies) >= quorum else {}


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
        admitted = {
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
        kept: dict[int, dict[str, KeptReply]] = {}

        def recovers(server_round: int) -> bool:
            kept[server_round] = _recoverable(
                deploy.snapshot_dir, server_round, policy.federation.min_nodes
            )
            return bool(kept[server_round])

        recovery = None
        run = take_over_resume(session, policy.sha256(), flower_run_id, recovers)
        if run is not None:
            started = members_entry(session, run.id)  # who was suspended then, not now
            left_out = in_force(session, started[0]) if started is not None else {}
            point = resume_point(run, deploy.snapshot_dir)
            replies = kept.get(point.rounds_done + 1)
            if replies:
                carriers = flower_runs(session, run.id)
                carrier = [f for f, first in carriers if first <= point.rounds_done + 1][-1]
                recovery = Recovery(replies, str(carrier))
            if point.weights is None and arrays_sha256(initial) != run.initial_model_sha256:
                raise ResumeError(
                    f"run {run.id} cannot resume: its initial model was "
                    f"{run.initial_model_sha256[:16]}..., this build gives "
                    f"{arrays_sha256(initial)[:16]}..."
                )
            run_id = run.id
        else:
            left_out = in_force(session)  # start_run leaves them out of its members too
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
                quorum=policy.witness.quorum,
            ).id
            point = ResumePoint(run_id, 0, None, {}, arrays_sha256(initial))
        _log_left_out(run_id, left_out)
        reasons = {name: row.reason for name, row in left_out.items()}
    return OpenedRun(
        run_id=run_id,
        point=point,
        participants={n: k for n, k in admitted.items() if n not in left_out},
        licences=licences,
        records=records,
        accepted_before=accepted,
        recovery=recovery,
        admitted=admitted,
        left_out=reasons,
    )


def _log_left_out(run_id: int, left_out: dict[str, Suspension]) -> None:
    """One line per suspended member the run leaves out: who, since when, and why."""
    for name, row in left_out.items():
        log.warning(
            "run %d: %s is left out (not a participant, not a witness): suspended at %s "
            "(ledger entry %s): %s",
            run_id,
            name,
            row.recorded_at.isoformat(timespec="seconds"),
            row.entry_seq,
            row.reason,
        )

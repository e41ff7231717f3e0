"""Resuming a run that did not finish: where it stopped, checked against the ledger.

Flower has no run resume; FedCommons continues the same *ledger* run as a new
Flower run. ``fedcommons operator resume`` checks here that the run can go
on (it did not finish, the policy is the one it recorded, the last recorded
round's snapshot is there with the hash the ledger holds) and marks it
``resuming``; the next ServerApp with that policy takes it over
(:func:`ledger.runs.take_over_resume`) and starts from
:func:`resume_point`: the snapshot, the aggregator's state and the round
counter. A round whose replies the crashed ServerApp kept is recovered from
them (:class:`server.app.run_start.Recovery`); one whose replies never reached
it is trained again; what clients spent
on it stays recorded and counts against their budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from common.arrays import Arrays
from common.errors import UserError
from common.policy import Policy
from ledger.runs import RESUMABLE
from ledger.schema import Run
from server.app.snapshots import SnapshotError, checked_snapshot, load_server_state

__all__ = ["ResumeError", "ResumePoint", "check_resumable", "resume_point"]


class ResumeError(UserError, ValueError):
    """A run that cannot be resumed, and why."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a run goes on from.

    Parameters
    ----------
    run_id : int
        The ledger run.
    rounds_done : int
        Rounds recorded; the resumed run starts at ``rounds_done + 1``.
    weights : dict or None
        The last recorded round's global model; ``None`` when no round was
        recorded (the run starts again from its initial model).
    server_state : dict
        The aggregator's state after that round (FedAvgM's momentum), or empty.
    model_sha256 : str
        The hash of the model it goes on from, as the ledger holds it.
    """

    run_id: int
    rounds_done: int
    weights: Arrays | None
    server_state: Arrays
    model_sha256: str


def resume_point(run: Run, snapshot_dir: Path) -> ResumePoint:
    """The last recorded round's snapshot and state; :class:`ResumeError` unless it checks."""
    if not run.rounds:
        return ResumePoint(run.id, 0, None, {}, run.initial_model_sha256)
    last = run.rounds[-1]
    try:
        weights = checked_snapshot(snapshot_dir, last.number, last.model_sha256_after)
    except SnapshotError as err:
        raise ResumeError(f"run {run.id} cannot resume: {err}") from None
    state = load_server_state(snapshot_dir, last.number)
    if state and set(state) != set(weights):
        raise ResumeError(
            f"run {run.id} cannot resume: the aggregator state kept with round {last.number} "
            "does not fit its model"
        )
    return ResumePoint(run.id, last.number, weights, state, last.model_sha256_after)


def check_resumable(
    session: Session, run_id: int, snapshot_dir: Path, policy: Policy | None = None
) -> tuple[Run, ResumePoint]:
    """The run and where it would go on from; :class:`ResumeError` says why it cannot.

    Parameters
    ----------
    policy : Policy, optional
        The policy the operator gives; it must be the one the run recorded.
    """
    run = session.get(Run, run_id)
    if run is None:
        raise ResumeError(f"run {run_id} is not in the ledger")
    if run.status not in RESUMABLE:
        raise ResumeError(f"run {run_id} is {run.status}: a run that finished does not resume")
    if policy is not None and policy.sha256() != run.policy_sha256:
        raise ResumeError(
            f"run {run_id} recorded policy {run.policy_sha256[:16]}..., this policy is "
            f"{policy.sha256()[:16]}...: a run resumes with its own policy (leave --policy out)"
        )
    return run, resume_point(run, snapshot_dir)

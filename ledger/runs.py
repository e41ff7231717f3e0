"""A run's life in the ledger: started, carried by one Flower run or more, and how it ended.

Statuses: ``running``; ``finished`` (with test metrics); ``failed`` (the run's
own rules stopped it: too few nodes, budgets; with the reason); ``interrupted``
(a signal, a lost SuperLink, a crash; with the reason); ``resuming`` (``fedcommons
operator resume`` asked for it to go on; the next ServerApp with the same policy
takes it over). Every change is a ledger entry; the Flower run a run started
with is ``runs.flower_run_id``, and each one that resumed it a
:class:`~ledger.schema.FlowerRun` row.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.entries import record_row
from ledger.members import record_run_members
from ledger.schema import FlowerRun, Run, utcnow
from ledger.store import LedgerError

__all__ = [
    "RESUMABLE",
    "finish_run",
    "flower_runs",
    "request_resume",
    "start_run",
    "take_over_resume",
]

ENDINGS = ("finished", "failed", "interrupted")
RESUMABLE = ("running", "failed", "interrupted", "resuming")
"""A run not finished can go on (``running`` only once its processes are gone)."""


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
    quorum: str | int = "majority",
) -> Run:
    """Open a run; ``flower_run_id`` links it to Flower's own run record.

    Also appends the run's ``run-members`` entry (:mod:`ledger.members`): the
    members admitted now and the witness ``quorum`` rule, refused with a
    :class:`LedgerError` if they cannot meet it.
    """
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
    record_run_members(session, run.id, quorum)
    return run


def _record_flower_run(
    session: Session, run_id: int, flower_run_id: int, *, first_round: int
) -> None:
    """Record that Flower run ``flower_run_id`` carries ``run_id`` from ``first_round`` on."""
    record_row(
        session,
        FlowerRun(run_id=run_id, flower_run_id=str(flower_run_id), first_round=first_round),
        "flower-run",
    )


def ledger_run_of(session: Session, flower_run_id: str) -> int | None:
    """The ledger run a Flower run carried (its first or a resumed one), if any."""
    run = session.scalar(select(Run.id).where(Run.flower_run_id == flower_run_id))
    if run is None:
        run = session.scalar(
            select(FlowerRun.run_id).where(FlowerRun.flower_run_id == flower_run_id).limit(1)
        )
    return run


def flower_runs(session: Session, run_id: int) -> list[tuple[str, int]]:
    """Every Flower run that carried ``run_id``, in order: ``(flower run id, first round)``.

    The first is the run's own ``flower_run_id``; each resume adds a
    :class:`~ledger.schema.FlowerRun` row.
    """
    run = session.get(Run, run_id)
    if run is None:
        raise LedgerError(f"run {run_id} is not in the ledger")
    first = [(run.flower_run_id, 1)] if run.flower_run_id is not None else []
    resumed = session.scalars(
        select(FlowerRun).where(FlowerRun.run_id == run_id).order_by(FlowerRun.id)
    )
    return first + [(f.flower_run_id, f.first_round) for f in resumed]


def request_resume(session: Session, run_id: int) -> Run:
    """Mark a run that did not finish as ``resuming`` (an entry); refuse a finished one."""
    run = session.get(Run, run_id)
    if run is None:
        raise LedgerError(f"run {run_id} is not in the ledger")
    if run.status not in RESUMABLE:
        raise LedgerError(f"run {run_id} is {run.status}: only a run that did not finish resumes")
    run.status = "resuming"
    run.ended_at = None
    record_row(session, run, "run")
    return run


def take_over_resume(
    session: Session,
    policy_sha256: str,
    flower_run_id: int,
    recovers: Callable[[int], bool] | None = None,
) -> Run | None:
    """The run waiting to resume with this policy, now carried by ``flower_run_id``.

    ``None`` if none waits: the ServerApp then starts a new run. ``recovers``
    says whether the round after the last recorded one is recovered from the
    replies the crashed run kept: that round stays carried by the Flower run
    its updates are bound to, and ``flower_run_id`` carries the rounds after it.
    """
    run = session.scalar(
        select(Run)
        .where(Run.status == "resuming", Run.policy_sha256 == policy_sha256)
        .order_by(Run.id)
        .limit(1)
    )
    if run is None:
        return None
    last = max((r.number for r in run.rounds), default=0)
    run.status = "running"
    run.status_reason = None
    record_row(session, run, "run")
    first = last + 2 if recovers is not None and recovers(last + 1) else last + 1
    _record_flower_run(session, run.id, flower_run_id, first_round=first)
    return run


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
    if status not in ENDINGS:
        raise LedgerError(f"a run ends as {', '.join(ENDINGS)}, not {status!r}")
    run = session.get(Run, run_id)
    if run is None:
        raise LedgerError(f"run {run_id} is not in the ledger")
    run.status = status
    run.ended_at = utcnow()
    run.test_accuracy = test_accuracy
    run.test_loss = test_loss
    run.status_reason = reason
    record_row(session, run, "run")

"""Members the operator suspended, and reinstated: who takes part in the runs to come.

``fedcommons operator suspend`` records a :class:`~ledger.schema.Suspension`
row with the action ``suspended`` and its reason, stated by a ``suspension``
entry; ``operator reinstate`` records one with ``reinstated``, stated by a
``reinstatement`` entry. A member is suspended while its latest row says so.

A suspended member is left out of every run started after the suspension:
it is not among the run's participants (the update gate refuses its
updates) and not in the run's ``run-members`` entry (the witness quorum
does not count it). A run already under way, resumed or not, keeps the
members its ``run-members`` entry names. Both are facts like any other:
``audit verify`` checks each row against its entry, and ``audit show``
lists them.

Example::

    with ledger.session() as session:
        suspend(session, "company-c", "near-identical updates to university-b's")
        in_force(session)       # {"company-c": <Suspension ...>}
        reinstate(session, "company-c", "explained: a shared preprocessing bug")
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from ledger.entries import record_row
from ledger.schema import Participant, Suspension
from ledger.store import LedgerError

__all__ = [
    "ENTRY_KINDS",
    "REINSTATED",
    "SUSPENDED",
    "in_force",
    "reinstate",
    "suspend",
    "suspension_history",
]

SUSPENDED = "suspended"
REINSTATED = "reinstated"
ENTRY_KINDS = {SUSPENDED: "suspension", REINSTATED: "reinstatement"}
"""The entry kind that states a row of each action."""

MAX_REASON = 2000
"""The longest reason kept (characters)."""


def suspend(session: Session, institution: str, reason: str) -> Suspension:
    """Suspend ``institution`` from the runs started from now on; return the recorded row.

    Raises
    ------
    LedgerError
        No such institution, it is suspended already, or the reason is empty.
    """
    return _record(session, institution, reason, SUSPENDED)


def reinstate(session: Session, institution: str, reason: str) -> Suspension:
    """Let a suspended ``institution`` take part in the runs started from now on.

    Raises
    ------
    LedgerError
        No such institution, it is not suspended, or the reason is empty.
    """
    return _record(session, institution, reason, REINSTATED)


def _record(session: Session, institution: str, reason: str, action: str) -> Suspension:
    reason = reason.strip()
    what = "a suspension" if action == SUSPENDED else "a reinstatement"
    if not reason:
        raise LedgerError(f"{what} needs a reason: say why, e.g. --reason 'colluding updates'")
    if len(reason) > MAX_REASON:
        raise LedgerError(f"the reason is {len(reason)} characters; at most {MAX_REASON}")
    # Locks the participant's row (PostgreSQL) so two operators cannot both decide at once.
    participant = session.scalar(
        select(Participant).where(Participant.name == institution).with_for_update()
    )
    if participant is None:
        known = sorted(session.scalars(select(Participant.name)))
        raise LedgerError(
            f"the ledger holds no institution named {institution!r}"
            + (f" (it holds {', '.join(known)})" if known else " (it holds none yet)")
        )
    latest = _latest(session, participant.id)
    if action == SUSPENDED and latest is not None and latest.action == SUSPENDED:
        raise LedgerError(
            f"{institution} is suspended already, since {_iso(latest)} (entry "
            f"{latest.entry_seq}): {latest.reason}"
        )
    if action == REINSTATED and (latest is None or latest.action != SUSPENDED):
        raise LedgerError(f"{institution} is not suspended: there is nothing to reinstate")
    row = Suspension(participant_id=participant.id, action=action, reason=reason)
    record_row(session, row, ENTRY_KINDS[action])
    return row


def _latest(session: Session, participant_id: int) -> Suspension | None:
    return session.scalar(
        select(Suspension)
        .where(Suspension.participant_id == participant_id)
        .order_by(Suspension.id.desc())
        .limit(1)
    )


def in_force(session: Session, before_seq: int | None = None) -> dict[str, Suspension]:
    """The suspended institutions and the row that suspended each, by name.

    With ``before_seq``, as the ledger stood before entry ``before_seq`` (a
    run's ``run-members`` entry: who was suspended when the run started).
    """
    query = select(Suspension).options(joinedload(Suspension.participant))
    if before_seq is not None:
        query = query.where(Suspension.entry_seq < before_seq)
    latest: dict[str, Suspension] = {}
    for row in session.scalars(query.order_by(Suspension.id)):
        latest[row.participant.name] = row
    return {name: row for name, row in sorted(latest.items()) if row.action == SUSPENDED}


def suspension_history(session: Session) -> list[dict[str, Any]]:
    """Every suspension and reinstatement, in order: institution, action, reason, time, entry."""
    rows = session.scalars(
        select(Suspension).options(joinedload(Suspension.participant)).order_by(Suspension.id)
    )
    return [
        {
            "institution": row.participant.name,
            "action": row.action,
            "reason": row.reason,
            "at": _iso(row),
            "entry_seq": row.entry_seq,
        }
        for row in rows
    ]


def _iso(row: Suspension) -> str:
    return row.recorded_at.isoformat(timespec="seconds")

"""A run's members in the ledger: the ``run-members`` entry written when the run starts.

The entry (:class:`common.quorum.RunMembers`) names every participant admitted
by then, and not suspended (:mod:`ledger.suspensions`), with the signing key
it was admitted with, and the policy's quorum rule; each receipt of the run
carries it with its inclusion proof
(:func:`ledger.tree_heads.round_receipts`), so nodes count cosignatures with
keys from the consortium's records. ``audit card`` compares it with the
admissions the ledger records.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.quorum import RUN_MEMBERS, QuorumError, RunMembers, required_quorum
from ledger.entries import append_entry
from ledger.facts import admitted_keys
from ledger.schema import LedgerEntry
from ledger.store import LedgerError
from ledger.suspensions import in_force

__all__ = ["members_entry", "record_run_members", "run_members"]


def record_run_members(session: Session, run_id: int, rule: str | int = "majority") -> RunMembers:
    """Append the ``run-members`` entry of ``run_id``: the participants admitted now,
    less those suspended now.

    Raises
    ------
    LedgerError
        ``rule`` asks for fewer than a majority of them, or more than there are.
    """
    suspended = in_force(session)
    keys = {name: key for name, key in admitted_keys(session).items() if name not in suspended}
    members = RunMembers(run_id, keys, rule)
    if members.members or rule != "majority":
        try:
            required_quorum(rule, len(members.members))
        except QuorumError as err:
            left_out = f" ({', '.join(suspended)} suspended)" if suspended else ""
            raise LedgerError(f"run {run_id} cannot start: {err}{left_out}") from None
    append_entry(session, RUN_MEMBERS, members.doc())
    return members


def members_entry(session: Session, run_id: int) -> tuple[int, str] | None:
    """The seq and payload of ``run_id``'s ``run-members`` entry (``None``: written before
    runs named their members)."""
    rows = session.execute(
        select(LedgerEntry.seq, LedgerEntry.payload)
        .where(LedgerEntry.kind == RUN_MEMBERS)
        .order_by(LedgerEntry.seq)
    )
    for seq, payload in rows:
        if json.loads(payload).get("run_id") == run_id:
            return seq, payload
    return None


def run_members(session: Session, run_id: int) -> RunMembers | None:
    """``run_id``'s members and quorum rule, as its entry records them."""
    found = members_entry(session, run_id)
    return None if found is None else RunMembers.from_payload(found[1])

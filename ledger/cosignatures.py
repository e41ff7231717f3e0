"""Participants as witnesses: their cosignatures on the checkpoints they checked.

A node that accepts a receipt has checked that the receipt's checkpoint is
signed by the operator, holds its update, and extends the last checkpoint the
node held (a consistency proof). It then returns a C2SP ``cosignature/v1``
line on that checkpoint, signed with its own key (:mod:`client.receipts`).
:func:`record_cosignatures` checks each line against the participant's
admitted key and keeps it in ``cosignatures`` (append-only, one per head and
witness); :func:`cosigned_note` is a checkpoint with every cosignature kept
for it, the note any transparency tool opens. ``audit verify`` checks what is
kept here (:mod:`ledger.verify.cosignatures`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.keys import KeyFileError, decode_ed25519_public
from common.note import (
    COSIGNATURE_TYPE,
    NoteError,
    SignatureLine,
    verifier_key,
    verify_cosignature,
)
from common.tree_head import TreeHead
from common.witness import Cosigned
from ledger.schema import Cosignature, LedgerTreeHead, Participant
from ledger.tree_heads import tree_head_from_row

__all__ = [
    "FUTURE_SLACK",
    "cosigned_by",
    "cosigned_note",
    "latest_cosigned",
    "participant_key",
    "record_cosignatures",
    "witness_keys",
]

log = logging.getLogger(__name__)

FUTURE_SLACK = 3600
"""Seconds a cosignature's time may be ahead of the server's clock (C2SP lets verifiers
refuse future times; one hour of clock skew is allowed)."""


def refuse_future_time(when: int, now: float) -> None:
    """Refuse a cosignature dated more than :data:`FUTURE_SLACK` after ``now``.

    Recording checks against the server's clock then, ``audit verify`` against
    its own clock now, which is later: a line that fails here could not have
    been recorded.
    """
    if when > now + FUTURE_SLACK:
        raise NoteError(
            f"it states a time in the future ({_utc(when)}): a cosignature dated more than "
            f"{FUTURE_SLACK // 60} minutes after the clock that checks it "
            f"({_utc(int(now))}) is refused, when recorded and when verified"
        )


def _utc(when: int) -> str:
    try:
        return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # beyond datetime's years
        return f"{when} s after 1970"


def participant_key(session: Session, name: str) -> tuple[Participant, Ed25519PublicKey] | None:
    participant = session.scalar(select(Participant).where(Participant.name == name))
    if participant is None or participant.public_key is None:
        return None
    try:
        return participant, decode_ed25519_public(participant.public_key)
    except KeyFileError:
        return None


def record_cosignatures(
    session: Session, institution: str, cosigned: Iterable[Cosigned]
) -> tuple[TreeHead | None, list[str]]:
    """Check and keep ``institution``'s cosignatures.

    Returns
    -------
    TreeHead or None
        The largest checkpoint whose cosignature verified: the head the node
        holds now (its next receipt's consistency proof starts there).
    list of str
        Why each refused line was refused (not kept; nothing else changes).
    """
    found = participant_key(session, institution)
    if found is None:
        return None, [f"{institution} has no admitted key to check cosignatures with"]
    participant, public = found
    largest: TreeHead | None = None
    refused = []
    for item in cosigned:
        row = session.scalar(
            select(LedgerTreeHead)
            .where(LedgerTreeHead.tree_size == item.tree_size)
            .where(LedgerTreeHead.root_hash == item.root)
            .where(LedgerTreeHead.checkpoint.is_not(None))
            .order_by(LedgerTreeHead.id)
            .limit(1)
        )
        if row is None or row.checkpoint is None:
            refused.append(f"no checkpoint of size {item.tree_size} with that root was signed")
            continue
        try:
            line = SignatureLine.parse(item.line)
            if line.name != institution:
                raise NoteError(f"the line is signed as {line.name!r}, not {institution!r}")
            when = verify_cosignature(row.body, line, public)
            refuse_future_time(when, time.time())
        except NoteError as err:
            refused.append(f"cosignature on the checkpoint of size {item.tree_size}: {err}")
            continue
        held = session.scalar(
            select(Cosignature.id).where(
                Cosignature.tree_head_id == row.id, Cosignature.witness == participant.name
            )
        )
        if held is None:
            session.add(
                Cosignature(
                    tree_head_id=row.id,
                    witness=participant.name,
                    line=line.line(),
                    cosigned_at=datetime.fromtimestamp(when, timezone.utc),
                )
            )
        head = tree_head_from_row(row)
        if largest is None or head.tree_size >= largest.tree_size:
            largest = head
    session.flush()
    for reason in refused:
        log.warning("%s: cosignature refused: %s", institution, reason)
    return largest, refused


def cosigned_note(session: Session, row: LedgerTreeHead) -> str | None:
    """The checkpoint's signed note with every cosignature kept for it (``None``: a JSON head)."""
    if row.checkpoint is None:
        return None
    lines = session.scalars(
        select(Cosignature.line).where(Cosignature.tree_head_id == row.id).order_by(Cosignature.id)
    )
    return row.checkpoint + "".join(lines)


def latest_cosigned(session: Session) -> dict[str, TreeHead]:
    """The largest checkpoint each participant cosigned: the head its node holds."""
    rows = session.execute(
        select(Cosignature.witness, LedgerTreeHead)
        .join(LedgerTreeHead, LedgerTreeHead.id == Cosignature.tree_head_id)
        .order_by(LedgerTreeHead.tree_size, Cosignature.id)
    )
    largest = {witness: row for witness, row in rows}  # the last per witness: its largest
    return {witness: tree_head_from_row(row) for witness, row in largest.items()}


def witness_keys(session: Session, row: LedgerTreeHead) -> dict[str, str]:
    """Each cosigner of ``row``'s checkpoint: its ``cosignature/v1`` verifier key."""
    keys = {}
    for name in session.scalars(
        select(Cosignature.witness)
        .where(Cosignature.tree_head_id == row.id)
        .order_by(Cosignature.id)
    ):
        found = participant_key(session, name)
        if found is not None:
            keys[name] = verifier_key(name, found[1], COSIGNATURE_TYPE)
    return keys


def cosigned_by(session: Session, witness: str) -> tuple[TreeHead, list[str]] | None:
    """The largest checkpoint ``witness`` cosigned, and every line kept on it, in order.

    What the server sends that witness's node, so it counts its quorum
    (:mod:`client.quorum`).
    """
    row = session.scalar(
        select(LedgerTreeHead)
        .join(Cosignature, Cosignature.tree_head_id == LedgerTreeHead.id)
        .where(Cosignature.witness == witness)
        .order_by(LedgerTreeHead.tree_size.desc(), LedgerTreeHead.id)
        .limit(1)
    )
    if row is None:
        return None
    lines = session.scalars(
        select(Cosignature.line).where(Cosignature.tree_head_id == row.id).order_by(Cosignature.id)
    )
    return tree_head_from_row(row), list(lines)

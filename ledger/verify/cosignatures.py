"""Check 8: every kept cosignature still verifies against its witness's admitted key.

A participant that accepted a receipt returned a ``cosignature/v1`` line on
its checkpoint (:mod:`ledger.cosignatures` keeps them). Each line must verify,
be its witness's, be dated no later than recording would accept, and the head
it signs must be a checkpoint; the report says which heads each participant
witnessed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.note import NoteError, SignatureLine, note_text, verify_cosignature
from ledger.cosignatures import FUTURE_SLACK, participant_key, refuse_future_time
from ledger.schema import Cosignature, LedgerTreeHead

__all__ = ["FUTURE_SLACK", "WitnessReport", "check_cosignatures"]


@dataclass(frozen=True)
class WitnessReport:
    """Per signed head (by tree size, in id order), the participants that cosigned it."""

    heads: list[tuple[int, list[str]]]

    @property
    def cosignatures(self) -> int:
        return sum(len(names) for _, names in self.heads)


def check_cosignatures(session: Session) -> WitnessReport:
    """Check every kept cosignature against its witness's admitted key.

    Raises
    ------
    NoteError
        A line does not verify, is not its witness's, is dated more than
        :data:`FUTURE_SLACK` ahead of this clock (as recording refuses), or
        names a participant without an admitted key: the message names the
        head and witness.
    """
    now = time.time()
    keys: dict[str, Ed25519PublicKey] = {}
    witnessed: dict[int, tuple[int, list[str]]] = {}
    for head_id, size in session.execute(
        select(LedgerTreeHead.id, LedgerTreeHead.tree_size).order_by(LedgerTreeHead.id)
    ):
        witnessed[head_id] = (size, [])
    rows = session.execute(
        select(Cosignature, LedgerTreeHead.body, LedgerTreeHead.checkpoint)
        .join(LedgerTreeHead, LedgerTreeHead.id == Cosignature.tree_head_id)
        .order_by(Cosignature.id)
    )
    for cosignature, body, checkpoint in rows:
        where = f"{cosignature.witness}'s cosignature on the tree head of size "
        where += str(witnessed[cosignature.tree_head_id][0])
        if checkpoint is None or note_text(checkpoint) != body:
            raise NoteError(f"{where}: the head is not a checkpoint")
        if cosignature.witness not in keys:
            found = participant_key(session, cosignature.witness)
            if found is None:
                raise NoteError(f"{where}: no admitted participant has that name")
            keys[cosignature.witness] = found[1]
        line = SignatureLine.parse(cosignature.line)
        if line.name != cosignature.witness:
            raise NoteError(f"{where}: the line is signed as {line.name!r}")
        try:
            refuse_future_time(verify_cosignature(body, line, keys[cosignature.witness]), now)
        except NoteError as err:
            raise NoteError(f"{where}: {err}") from None
        witnessed[cosignature.tree_head_id][1].append(cosignature.witness)
    return WitnessReport([witnessed[i] for i in sorted(witnessed)])

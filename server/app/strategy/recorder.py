"""The round recorder: what the server keeps of every round, and the receipts it owes.

:class:`LedgerRecorder` writes each fact to the ledger as soon as it is known
(exclusions and privacy charges when the replies arrive, since a node that
trained has spent its budget whatever happens next; the round once it is
evaluated), keeps the accepted sealed updates before anything else (a
resumed run recovers the round from them), saves the global model's
snapshot, signs a tree head and builds a receipt for every accepted update.
:class:`NullRecorder` keeps nothing: for tests and benchmarks of the
strategy alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.arrays import Arrays
from common.receipts import Receipt, TreeHead
from common.witness import Cosigned, Witnessed
from ledger import (
    ChargeFact,
    DefenceFact,
    ExclusionFact,
    Ledger,
    UpdateFact,
    record_defences,
    record_exclusions,
    record_privacy,
    record_round,
)
from ledger.contributions import record_valuation
from ledger.cosignatures import cosigned_by, latest_cosigned, record_cosignatures
from ledger.runs import flower_runs, ledger_run_of
from ledger.schema import LedgerTreeHead, Participant, Round, RoundUpdate
from ledger.shapley import RoundValues
from ledger.tree_heads import (
    LedgerTree,
    round_receipts,
    sign_tree_head,
    tree_head_from_row,
)
from server.app.snapshots import KeptReply, keep_replies, save_server_state, save_snapshot
from server.app.strategy.owed import OwedCharge

__all__ = ["FinishedRound", "LedgerRecorder", "NullRecorder", "RoundRecorder", "held_heads"]

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishedRound:
    """An aggregated, evaluated round: what a recorder keeps of it."""

    number: int
    model_before: str
    model_after: str
    weights: Arrays
    loss: float
    accuracy: float
    started: float
    """``time.monotonic()`` when the round was configured."""
    updates: Sequence[UpdateFact]
    flower_run_id: str | None = None
    """The Flower run that carried the round, if not the recorder's (a round recovered
    after a crash: its updates are bound to the run that crashed)."""
    server_state: Arrays = field(default_factory=dict)
    """The aggregator's own state (FedAvgM's momentum), kept to resume from this round."""
    valuation: RoundValues | None = None
    """What each accepted update was worth (``None``: not valued)."""


class RoundRecorder(Protocol):
    """Keeps a run's record; every method is called once per event, in order."""

    def keep_replies(self, server_round: int, replies: Mapping[str, KeptReply]) -> None:
        """The round's accepted replies, kept before anything is aggregated or recorded."""

    def record_exclusions(self, server_round: int, exclusions: list[ExclusionFact]) -> None:
        """Nodes left out before training (e.g. their licence expired)."""

    def record_replies(
        self, server_round: int, charges: list[ChargeFact], exclusions: list[ExclusionFact]
    ) -> None:
        """The privacy each update charged, and the replies left out, as soon as they arrive."""

    def record_defences(self, server_round: int, defences: list[DefenceFact]) -> None:
        """What the norm bound and the aggregation rule did to the round's updates."""

    def record_round(self, result: FinishedRound) -> list[Receipt]:
        """An evaluated round; returns the receipts owed to its contributors."""

    def record_cosignatures(self, institution: str, cosigned: list[Cosigned]) -> list[str]:
        """A node's cosignatures on the checkpoints it holds; returns why any were refused."""

    def record_owed(self, owed: list[OwedCharge]) -> None:
        """Charges members signed for rounds the ledger may lack (each recorded once)."""

    def witnesses(self, institution: str, final: bool = False) -> Witnessed | None:
        """Every member's cosignature kept on the checkpoint ``institution`` last cosigned."""


class NullRecorder:
    """Keeps nothing and owes no receipts."""

    def keep_replies(self, server_round: int, replies: Mapping[str, KeptReply]) -> None:
        return None

    def record_exclusions(self, server_round: int, exclusions: list[ExclusionFact]) -> None:
        return None

    def record_replies(
        self, server_round: int, charges: list[ChargeFact], exclusions: list[ExclusionFact]
    ) -> None:
        return None

    def record_defences(self, server_round: int, defences: list[DefenceFact]) -> None:
        return None

    def record_round(self, result: FinishedRound) -> list[Receipt]:
        return []

    def record_cosignatures(self, institution: str, cosigned: list[Cosigned]) -> list[str]:
        return []

    def record_owed(self, owed: list[OwedCharge]) -> None:
        return None

    def witnesses(self, institution: str, final: bool = False) -> Witnessed | None:
        return None


class LedgerRecorder:
    """Records a run in the ledger, with a snapshot per round and signed receipts.

    Parameters
    ----------
    ledger : Ledger
        Where the run is recorded.
    run_id : int
        The ledger's id of this run.
    flower_run_id : str
        Flower's run id, as the updates' headers and the receipts name it.
    snapshot_dir : Path or None
        Where each round's global model and accepted envelopes are saved;
        ``None`` saves none.
    signer : Ed25519PrivateKey, optional
        The operator's key: after each round it signs the ledger's tree head,
        and every participant whose update the round accepted is owed a
        receipt. ``None`` signs nothing and owes nothing.
    """

    def __init__(
        self,
        ledger: Ledger,
        run_id: int,
        *,
        flower_run_id: str,
        snapshot_dir: Path | None,
        signer: Ed25519PrivateKey | None = None,
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.flower_run_id = flower_run_id
        self.snapshot_dir = snapshot_dir
        self.signer = signer
        self._tree = LedgerTree()
        self._tree_unsure = False  # a failed write may have left leaves it rolled back
        self._heads: dict[str, TreeHead] = {}  # the head each participant's node holds
        self._heads_read = False

    def _write(self, work: Callable[[Session], T], what: str) -> T:
        """``work`` in one ledger transaction, tried again after a lost connection.

        A try that failed may have read into the Merkle tree entries its
        rollback removed: the next try reads the tree afresh.
        """

        def attempt(session: Session) -> T:
            if self._tree_unsure:
                self._tree = LedgerTree()
            self._tree_unsure = True
            return work(session)

        result = self.ledger.transact(attempt, what=f"{what} (run {self.run_id})")
        self._tree_unsure = False
        return result

    def _held_heads(self, session: Session) -> None:
        """Once per run: the head each node holds, from the ledger (see :func:`held_heads`).

        Cosignatures that arrived in this run before are newer, and kept.
        """
        if not self._heads_read:
            self._heads = {**held_heads(session), **self._heads}
            self._heads_read = True

    def resume(self, rounds_done: int) -> list[Receipt]:
        """Continue a run after a crash: the receipts of the last recorded round, which
        may never have reached their participants.

        They are built again under the same head, each with a consistency
        proof from the head its node holds (:func:`held_heads`); a node that
        already holds one finds the same entry under the same head and keeps it.
        """
        if self.signer is None:
            return []
        return self._write(lambda session: self._resume(session, rounds_done), "resuming")

    def _resume(self, session: Session, rounds_done: int) -> list[Receipt]:
        owed: list[Receipt] = []
        self._tree.sync(session)
        self._held_heads(session)
        carriers = flower_runs(session, self.run_id)
        for number, round_id, _, last_seq in _recorded_rounds(session, self.run_id):
            head = _head_covering(session, last_seq)
            if number != rounds_done or head is None:
                continue
            flower_run = [f for f, first in carriers if first <= number][-1]
            owed = round_receipts(
                session,
                self._tree,
                head,
                round_id=round_id,
                server_round=number,
                flower_run_id=str(flower_run),
                previous={n: h for n, h in self._heads.items() if h.tree_size < head.tree_size},
            )
            self._heads.update({r.participant: head for r in owed})
        return owed

    def record_cosignatures(self, institution: str, cosigned: list[Cosigned]) -> list[str]:
        """Keep the cosignatures that verify; the largest is the head the node holds now."""
        if not cosigned:
            return []
        largest, refused = self._write(
            lambda session: record_cosignatures(session, institution, cosigned),
            f"recording {institution}'s cosignatures",
        )
        if largest is not None:
            self._heads[institution] = largest
        return refused

    def witnesses(self, institution: str, final: bool = False) -> Witnessed | None:
        """The lines on the head ``institution`` holds, for its node to count (its quorum)."""
        found = self._write(
            lambda session: cosigned_by(session, institution), "reading cosignatures"
        )
        if found is None:
            return Witnessed(0, "", (), final) if final else None
        head, lines = found
        return Witnessed(head.tree_size, head.root, tuple(lines), final)

    def keep_replies(self, server_round: int, replies: Mapping[str, KeptReply]) -> None:
        if self.snapshot_dir is not None and replies:
            keep_replies(self.snapshot_dir, server_round, replies)

    def record_owed(self, owed: list[OwedCharge]) -> None:
        if owed:
            self._write(lambda session: _record_owed(session, owed), "recording owed charges")

    def record_exclusions(self, server_round: int, exclusions: list[ExclusionFact]) -> None:
        if exclusions:
            self._write(
                lambda session: record_exclusions(session, self.run_id, server_round, exclusions),
                f"recording round {server_round}'s exclusions",
            )

    def record_replies(
        self, server_round: int, charges: list[ChargeFact], exclusions: list[ExclusionFact]
    ) -> None:
        self._write(
            lambda session: record_privacy(
                session, self.run_id, server_round, charges=charges, exclusions=exclusions
            ),
            f"recording round {server_round}'s privacy charges",
        )

    def record_defences(self, server_round: int, defences: list[DefenceFact]) -> None:
        if defences:
            self._write(
                lambda session: record_defences(session, self.run_id, server_round, defences),
                f"recording round {server_round}'s defences",
            )

    def record_round(self, result: FinishedRound) -> list[Receipt]:
        if self.snapshot_dir is not None:
            save_snapshot(self.snapshot_dir, result.number, result.weights, result.model_after)
            if result.server_state:
                save_server_state(self.snapshot_dir, result.number, result.server_state)
        receipts = self._write(
            lambda session: self._record_round(session, result), f"recording round {result.number}"
        )
        for receipt in receipts:
            self._heads[receipt.participant] = receipt.tree_head
        return receipts

    def _record_round(self, session: Session, result: FinishedRound) -> list[Receipt]:
        row = record_round(
            session,
            self.run_id,
            number=result.number,
            model_sha256_before=result.model_before,
            model_sha256_after=result.model_after,
            loss=result.loss,
            accuracy=result.accuracy,
            seconds=time.monotonic() - result.started,
            updates=list(result.updates),
        )
        values = (
            record_valuation(session, self.run_id, result.number, result.valuation)
            if result.valuation is not None
            else {}
        )
        if self.signer is None:
            return []
        self._held_heads(session)
        head = sign_tree_head(
            session,
            self.signer,
            note=f"run {self.run_id} round {result.number}",
            tree=self._tree,
        )
        receipts = round_receipts(
            session,
            self._tree,
            head,
            round_id=row.id,
            server_round=result.number,
            flower_run_id=result.flower_run_id or self.flower_run_id,
            previous=self._heads,
            contributions=values,
        )
        return receipts


def _record_owed(session: Session, owed: list[OwedCharge]) -> None:
    """Each owed charge under the ledger run of the Flower run its header names (once)."""
    for item in owed:
        run_id = ledger_run_of(session, item.flower_run_id)
        if run_id is None:
            log.warning(
                "%s's owed charge names Flower run %s, which carried no run of this ledger",
                item.charge.institution, item.flower_run_id,
            )  # fmt: skip
            continue
        record_privacy(session, run_id, item.round, charges=[item.charge], exclusions=[])


def _recorded_rounds(session: Session, run_id: int) -> list[tuple[int, int, list[str], int]]:
    """Each recorded round of ``run_id``: number, row id, contributors, last entry seq."""
    rounds: dict[int, tuple[int, list[str], int]] = {}
    for number, round_id, round_seq, name, update_seq in session.execute(
        select(Round.number, Round.id, Round.entry_seq, Participant.name, RoundUpdate.entry_seq)
        .outerjoin(RoundUpdate, RoundUpdate.round_id == Round.id)
        .outerjoin(Participant, Participant.id == RoundUpdate.participant_id)
        .where(Round.run_id == run_id)
        .order_by(Round.number)
    ):
        _, names, last = rounds.get(number, (round_id, [], round_seq or 0))
        if name is not None:
            names.append(name)
        rounds[number] = (round_id, names, max(last, update_seq or 0))
    return [(n, rid, names, last) for n, (rid, names, last) in sorted(rounds.items())]


def held_heads(session: Session) -> dict[str, TreeHead]:
    """The head each participant's node holds, as far as the ledger knows.

    The largest checkpoint it cosigned; for a participant that never cosigned
    (its node predates cosignatures), the head of the last receipt it was
    owed: the first head covering its last update. A node that holds another
    head refuses the next receipt, and its next reply cosigns the head it
    holds, so the receipt after that starts from it.
    """
    heads = latest_cosigned(session)
    last_updates = session.execute(
        select(Participant.name, func.max(RoundUpdate.entry_seq))
        .join(RoundUpdate, RoundUpdate.participant_id == Participant.id)
        .group_by(Participant.name)
    )
    for name, seq in last_updates:
        if name not in heads and seq is not None:
            head = _head_covering(session, seq)
            if head is not None:
                heads[name] = head
    return heads


def _head_covering(session: Session, seq: int) -> TreeHead | None:
    """The first signed tree head whose tree holds entry ``seq``."""
    row = session.scalar(
        select(LedgerTreeHead)
        .where(LedgerTreeHead.tree_size > seq)
        .order_by(LedgerTreeHead.tree_size, LedgerTreeHead.id)
        .limit(1)
    )
    return tree_head_from_row(row) if row is not None else None

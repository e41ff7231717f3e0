"""The round recorder: what the server keeps of every round, and the receipts it owes.

:class:`LedgerRecorder` writes each fact to the ledger as soon as it is known
(exclusions and privacy charges when the replies arrive, since a node that
trained has spent its budget whatever happens next; the round once it is
evaluated), saves the global model's snapshot and the accepted sealed
updates, signs a tree head and builds a receipt for every accepted update.
:class:`NullRecorder` keeps nothing: for tests and benchmarks of the
strategy alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.arrays import Arrays
from common.envelope import Envelope
from common.receipts import Receipt, TreeHead
from server.ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    UpdateFact,
    record_exclusions,
    record_privacy,
    record_round,
)
from server.ledger.tree_heads import LedgerTree, round_receipts, sign_tree_head
from server.snapshots import save_envelopes, save_snapshot

__all__ = ["FinishedRound", "LedgerRecorder", "NullRecorder", "RoundRecorder"]


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
    envelopes: Mapping[str, Envelope]


class RoundRecorder(Protocol):
    """Keeps a run's record; every method is called once per event, in order."""

    def record_exclusions(self, server_round: int, exclusions: list[ExclusionFact]) -> None:
        """Nodes left out before training (e.g. their licence expired)."""

    def record_replies(
        self, server_round: int, charges: list[ChargeFact], exclusions: list[ExclusionFact]
    ) -> None:
        """The privacy each update charged, and the replies left out, as soon as they arrive."""

    def record_round(self, result: FinishedRound) -> list[Receipt]:
        """An evaluated round; returns the receipts owed to its contributors."""


class NullRecorder:
    """Keeps nothing and owes no receipts."""

    def record_exclusions(self, server_round: int, exclusions: list[ExclusionFact]) -> None:
        return None

    def record_replies(
        self, server_round: int, charges: list[ChargeFact], exclusions: list[ExclusionFact]
    ) -> None:
        return None

    def record_round(self, result: FinishedRound) -> list[Receipt]:
        return []


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
        self._heads: dict[str, TreeHead] = {}  # the last head each participant was given

    def record_exclusions(self, server_round: int, exclusions: list[ExclusionFact]) -> None:
        if exclusions:
            with self.ledger.session() as session:
                record_exclusions(session, self.run_id, server_round, exclusions)

    def record_replies(
        self, server_round: int, charges: list[ChargeFact], exclusions: list[ExclusionFact]
    ) -> None:
        with self.ledger.session() as session:
            record_privacy(
                session, self.run_id, server_round, charges=charges, exclusions=exclusions
            )

    def record_round(self, result: FinishedRound) -> list[Receipt]:
        if self.snapshot_dir is not None:
            save_snapshot(self.snapshot_dir, result.number, result.weights, result.model_after)
            save_envelopes(self.snapshot_dir, result.number, result.envelopes)
        with self.ledger.session() as session:
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
            if self.signer is None:
                return []
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
                flower_run_id=self.flower_run_id,
                previous=self._heads,
            )
        for receipt in receipts:
            self._heads[receipt.participant] = head
        return receipts

"""FedAvg that records every round in the ledger and checkpoints the global model."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import overload

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM
from sqlalchemy.orm import Session

from common.envelope import ENVELOPE, Envelope, EnvelopeError, UpdateHeader, envelope_of
from common.licences import Licence
from common.model import arrays_sha256
from common.policy import PrivacyConfig
from common.protocol import BUDGET_EXHAUSTED, PrivacyCharge, Refusal
from common.receipts import RECEIPTS, Checkpoint, Receipt
from common.records import Arrays, arrays_of, record_of
from server.checkpoint import save_checkpoint, save_envelopes
from server.intake import UpdateGate
from server.ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    UpdateFact,
    record_exclusions,
    record_privacy,
    record_round,
)
from server.ledger.checkpoints import LedgerTree, round_receipts, sign_checkpoint

__all__ = ["LedgerFedAvg", "RoundFailed"]

log = logging.getLogger(__name__)

Evaluator = Callable[[Arrays], tuple[float, float]]

REJECTED = 422
"""Exclusion code: the server rejected a reply (malformed or outside the policy)."""
LICENCE = 451
"""Exclusion code: the node's data licence does not allow the run's purpose (any more)."""


class RoundFailed(RuntimeError):
    """Fewer nodes than the policy's minimum returned a usable update."""


class LedgerFedAvg(FedAvgM):
    """Flower's FedAvg (weighted by ``num-examples``) plus ledger and checkpoints.

    Built on Flower's ``FedAvgM``: with ``server_momentum=0`` and
    ``server_learning_rate=1`` (the defaults) it is exactly FedAvg; server
    momentum averages the clients' DP noise over rounds.

    Parameters
    ----------
    ledger : Ledger or None
        Where rounds are recorded; ``None`` records nothing.
    run_id : int or None
        The ledger's id of this run.
    evaluator : callable
        Maps global weights to ``(loss, accuracy)`` on the server's validation split.
    checkpoint_dir : Path or None
        Where each round's global model is saved; ``None`` disables checkpoints.
    min_nodes : int
        Replies needed for a round to count.
    privacy : PrivacyConfig
        The run's privacy policy: an update trained without DP when DP is
        required, or reporting an epsilon past the budget, is rejected.
    gate : UpdateGate
        Verifies and decrypts each sealed update (:mod:`server.intake`); an
        update it rejects is left out and the reason recorded.
    checkpoint_signer : Ed25519PrivateKey, optional
        The operator's key: after each recorded round it signs a ledger
        checkpoint (the Merkle tree head), and every participant whose update
        the round accepted gets a receipt (:class:`common.receipts.Receipt`)
        with its next message: the next round's train message, or the query
        :meth:`deliver_receipts` sends after the last round. ``None`` signs none.
    licences : mapping, optional
        Licence terms of every admitted dataset, by (institution, dataset
        sha256). Every round, an update must come from an admitted dataset
        whose licence allows ``purpose`` on ``today()``; a node whose
        licences no longer do is not asked to train (an exclusion with code
        451). ``None`` checks no licences.
    purpose : str (default: "research")
        The run's purpose (``federation.purpose``).
    today : callable (default: ``date.today``)
        The date licences are checked against.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvgM` (``fraction_train``,
        ``server_learning_rate``, ``server_momentum``, ...).
    """

    def __init__(
        self,
        *,
        ledger: Ledger | None,
        run_id: int | None,
        evaluator: Evaluator,
        checkpoint_dir: Path | None,
        min_nodes: int,
        privacy: PrivacyConfig,
        gate: UpdateGate,
        checkpoint_signer: Ed25519PrivateKey | None = None,
        licences: Mapping[tuple[str, str], Licence] | None = None,
        purpose: str = "research",
        today: Callable[[], date] = date.today,
        **kwargs: float | int | str,
    ) -> None:
        super().__init__(
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
            **kwargs,  # type: ignore[arg-type]
        )
        self.ledger = ledger
        self.run_id = run_id
        self.evaluator = evaluator
        self.checkpoint_dir = checkpoint_dir
        self.min_nodes = min_nodes
        self.privacy = privacy
        self.gate = gate
        self.checkpoint_signer = checkpoint_signer
        self.licences = dict(licences) if licences is not None else None
        self.purpose = purpose
        self.today = today
        self._institution_of: dict[int, str] = {}  # learnt from verified updates
        self._round_started = time.monotonic()
        self._model_before = ""
        self._updates: list[UpdateFact] = []
        self._envelopes: dict[str, Envelope] = {}
        self._tree = LedgerTree()
        self._pending: dict[str, list[Receipt]] = {}  # receipts not yet delivered, by name
        self._heads: dict[str, Checkpoint] = {}  # the last head each participant was given
        self._carrying: dict[int, int] = {}  # node id -> receipts its train message carries

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_started = time.monotonic()
        self._model_before = arrays_sha256(arrays_of(arrays))
        self.gate.begin_round(server_round, self._model_before)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        kept, excluded = [], []
        self._carrying = {}
        for message in messages:
            institution = self._institution_of.get(message.metadata.dst_node_id)
            reason = self._licence_block(institution) if institution else None
            if reason is None:
                receipts = self._pending.get(institution or "", [])
                if receipts:
                    message.content = _with_receipts(message.content, receipts)
                    self._carrying[message.metadata.dst_node_id] = len(receipts)
                kept.append(message)
            else:
                excluded.append(
                    ExclusionFact(institution, message.metadata.dst_node_id, LICENCE, reason)
                )
        if excluded:
            for e in excluded:
                log.warning(
                    "round %d: %s not asked to train: %s", server_round, e.institution, e.reason
                )
            if self.ledger is not None and self.run_id is not None:
                with self.ledger.session() as session:
                    record_exclusions(session, self.run_id, server_round, excluded)
        return kept

    def _licence_block(self, institution: str) -> str | None:
        """Why none of ``institution``'s datasets may be used today; ``None`` if one may."""
        if self.licences is None:
            return None
        reasons = [
            licence.refusal(self.purpose, self.today())
            for (name, _), licence in self.licences.items()
            if name == institution
        ]
        if not reasons:
            return f"{institution} has no admitted dataset"
        if any(r is None for r in reasons):
            return None
        return "; ".join(r for r in reasons if r)

    def _check_licence(self, header: UpdateHeader) -> None:
        """Reject an update from a dataset not admitted, or whose licence no longer allows it."""
        if self.licences is None:
            return
        dataset = header.privacy.dataset_sha256
        licence = self.licences.get((header.participant, dataset))
        if licence is None:
            raise EnvelopeError(
                "unknown-dataset",
                f"{header.participant} trained on dataset {dataset[:16]}..., which it did not "
                "declare at admission",
            )
        refusal = licence.refusal(self.purpose, self.today())
        if refusal is not None:
            raise EnvelopeError("licence", f"{refusal} ({self.purpose} run)")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record every charge and exclusion, then FedAvg the accepted updates.

        Charges are recorded before the round is known to succeed: a client
        that trained has spent its budget whatever happens next.
        """
        accepted: list[Message] = []
        charges: list[ChargeFact] = []
        exclusions: list[ExclusionFact] = []
        self._updates, self._envelopes = [], {}
        for message in replies:
            node_id = message.metadata.src_node_id
            self._delivered(node_id, self._carrying.pop(node_id, 0))
            if message.has_error():
                refusal = Refusal.from_reason(message.error.reason or "")
                exclusions.append(
                    ExclusionFact(refusal.institution, node_id, message.error.code, refusal.detail)
                )
                continue
            try:
                envelope = envelope_of(message.content.config_records.get(ENVELOPE))
                started = time.perf_counter()
                opened = self.gate.open(envelope)
                open_seconds = time.perf_counter() - started
                self._institution_of[node_id] = opened.header.participant
                self._check_charge(opened.header.privacy)
                self._check_licence(opened.header)
                metrics = message.content.metric_records.get("metrics", MetricRecord())
                train_loss = _metric(metrics, "train-loss")
                train_seconds = _metric(metrics, "train-seconds")
            except EnvelopeError as err:
                exclusions.append(
                    ExclusionFact(
                        _claimed(message),
                        node_id,
                        REJECTED,
                        f"update rejected ({err.reason}): {err.detail}",
                    )
                )
                continue
            header = opened.header
            charges.append(ChargeFact(header.participant, header.privacy))
            # From here on FedAvg sees the decrypted update, weighted by the
            # example count the participant signed.
            message.content = RecordDict(
                {
                    self.arrayrecord_key: record_of(opened.arrays),
                    "metrics": MetricRecord(
                        {self.weighted_by_key: header.num_examples, "train-loss": train_loss}
                    ),
                }
            )
            accepted.append(message)
            self._envelopes[header.participant] = envelope
            self._updates.append(
                UpdateFact(
                    institution=header.participant,
                    num_examples=header.num_examples,
                    train_loss=train_loss,
                    update_sha256=opened.arrays_sha256,
                    update_bytes=opened.arrays_bytes,
                    train_seconds=train_seconds,
                    ciphertext_sha256=opened.ciphertext_sha256,
                    plaintext_sha256=opened.plaintext_sha256,
                    signature=opened.signature,
                    signer_key_id=opened.signer_key_id,
                    seal_seconds=_metric(metrics, "seal-seconds", required=False),
                    open_seconds=open_seconds,
                )
            )
        if self.ledger is not None and self.run_id is not None:
            with self.ledger.session() as session:
                record_privacy(
                    session, self.run_id, server_round, charges=charges, exclusions=exclusions
                )
        for e in exclusions:
            log.warning(
                "round %d: node %d (%s) excluded: %s",
                server_round,
                e.node_id,
                e.institution or "unknown",
                e.reason,
            )
        if len(accepted) < self.min_nodes:
            raise RoundFailed(
                f"round {server_round}: {len(accepted)} of the required {self.min_nodes} "
                "nodes returned an update"
                + (f" ({'; '.join(_describe(e) for e in exclusions)})" if exclusions else "")
            )
        return super().aggregate_train(server_round, accepted)

    def _check_charge(self, charge: PrivacyCharge) -> None:
        """Reject an update whose signed privacy charge breaks the policy."""
        if self.privacy.dp and not charge.dp:
            raise EnvelopeError("privacy", "trained without DP, but the policy requires DP")
        if charge.dp and charge.epsilon > self.privacy.epsilon * (1 + 1e-9):
            raise EnvelopeError(
                "privacy",
                f"reports epsilon {charge.epsilon:.4f}, past the budget {self.privacy.epsilon}",
            )

    def finish_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate, checkpoint and record a round (Flower's ``evaluate_fn``)."""
        weights = arrays_of(arrays)
        loss, accuracy = self.evaluator(weights)
        if server_round == 0:
            return MetricRecord({"loss": loss, "accuracy": accuracy})
        model_after = arrays_sha256(weights)
        if self.checkpoint_dir is not None:
            save_checkpoint(self.checkpoint_dir, server_round, weights, model_after)
            save_envelopes(self.checkpoint_dir, server_round, self._envelopes)
        if self.ledger is not None and self.run_id is not None:
            with self.ledger.session() as session:
                round_row = record_round(
                    session,
                    self.run_id,
                    number=server_round,
                    model_sha256_before=self._model_before,
                    model_sha256_after=model_after,
                    loss=loss,
                    accuracy=accuracy,
                    seconds=time.monotonic() - self._round_started,
                    updates=self._updates,
                )
                if self.checkpoint_signer is not None:
                    checkpoint = sign_checkpoint(
                        session,
                        self.checkpoint_signer,
                        note=f"run {self.run_id} round {server_round}",
                        tree=self._tree,
                    )
                    self._queue_receipts(session, round_row.id, server_round, checkpoint)
        log.info("round %d: validation accuracy %.4f, loss %.4f", server_round, accuracy, loss)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    def _queue_receipts(
        self, session: Session, round_id: int, server_round: int, checkpoint: Checkpoint
    ) -> None:
        """A receipt for each update the round accepted, to go out with the next message."""
        for receipt in round_receipts(
            session,
            self._tree,
            checkpoint,
            round_id=round_id,
            server_round=server_round,
            flower_run_id=self.gate.run_id,
            previous=self._heads,
        ):
            self._pending.setdefault(receipt.participant, []).append(receipt)
            self._heads[receipt.participant] = checkpoint

    def _delivered(self, node_id: int, count: int) -> None:
        """The node answered a message carrying ``count`` receipts: they are delivered.

        A node that could not verify one refuses the round (code 409), which
        is recorded as its exclusion; sending the same receipt again would
        not change that.
        """
        name = self._institution_of.get(node_id)
        if count and name in self._pending:
            del self._pending[name][:count]

    def deliver_receipts(self, grid: Grid, timeout: float | None) -> dict[str, str]:
        """Send the receipts still pending (the last round's) in one query per node.

        Returns
        -------
        dict
            Per participant, ``"stored"`` or why its node refused them.
        """
        nodes = {name: node for node, name in self._institution_of.items()}
        messages, carrying = [], {}
        for name, receipts in self._pending.items():
            if receipts and name in nodes:
                messages.append(
                    Message(
                        _with_receipts(RecordDict(), receipts),
                        dst_node_id=nodes[name],
                        message_type=MessageType.QUERY,
                    )
                )
                carrying[nodes[name]] = len(receipts)
        outcome = {
            name: "not delivered (no reply)" for name in self._pending if self._pending[name]
        }
        if not messages:
            return {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node_id = reply.metadata.src_node_id
            name = self._institution_of.get(node_id, f"node {node_id}")
            self._delivered(node_id, carrying.get(node_id, 0))
            if reply.has_error():
                outcome[name] = Refusal.from_reason(reply.error.reason or "").detail
                log.warning("%s refused its receipts: %s", name, outcome[name])
            else:
                outcome[name] = "stored"
        return outcome


def _with_receipts(content: RecordDict, receipts: list[Receipt]) -> RecordDict:
    """A copy of ``content`` that also carries ``receipts`` (JSON, in order)."""
    copy = RecordDict(dict(content))
    copy[RECEIPTS] = ConfigRecord({"receipts": [r.to_json() for r in receipts]})
    return copy


def _claimed(message: Message) -> str | None:
    """Who an unusable update claims to be from (unverified; for the record only)."""
    record = message.content.config_records.get(ENVELOPE)
    header = record.get("header") if record is not None else None
    if isinstance(header, bytes):
        with contextlib.suppress(EnvelopeError):
            return UpdateHeader.parse(header).participant
    return None


@overload
def _metric(metrics: MetricRecord, key: str) -> float: ...
@overload
def _metric(metrics: MetricRecord, key: str, *, required: bool) -> float | None: ...
def _metric(metrics: MetricRecord, key: str, *, required: bool = True) -> float | None:
    """A finite number the node reported (unsigned: for the record only).

    The ledger cannot hold NaN (SQLite stores it as NULL), so a missing or
    non-finite value is ``None`` where the metric is optional and makes the
    reply malformed where it is required.
    """
    value = metrics.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if required:
        raise EnvelopeError(
            "malformed", f"the reply's metric {key!r} is missing or not a finite number"
        )
    return None


def _describe(exclusion: ExclusionFact) -> str:
    who = exclusion.institution or f"node {exclusion.node_id}"
    kind = "privacy budget" if exclusion.code == BUDGET_EXHAUSTED else "excluded"
    return f"{who} [{kind}]: {exclusion.reason}"

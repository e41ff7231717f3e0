"""FedAvg that records every round in the ledger and checkpoints the global model."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM

from common.model import arrays_sha256, arrays_to_bytes
from common.policy import PrivacyConfig
from common.protocol import BUDGET_EXHAUSTED, META, PRIVACY, PrivacyCharge, Refusal
from common.records import Arrays, arrays_of
from server.checkpoint import save_checkpoint
from server.ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    UpdateFact,
    record_privacy,
    record_round,
)

__all__ = ["LedgerFedAvg", "RoundFailed"]

log = logging.getLogger(__name__)

Evaluator = Callable[[Arrays], tuple[float, float]]

REJECTED = 422
"""Exclusion code: the server rejected a reply (malformed or outside the policy)."""


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
        self._round_started = time.monotonic()
        self._model_before = ""
        self._updates: list[UpdateFact] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_started = time.monotonic()
        self._model_before = arrays_sha256(arrays_of(arrays))
        return super().configure_train(server_round, arrays, config, grid)

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
        for message in replies:
            node_id = message.metadata.src_node_id
            if message.has_error():
                refusal = Refusal.from_reason(message.error.reason or "")
                exclusions.append(
                    ExclusionFact(refusal.institution, node_id, message.error.code, refusal.detail)
                )
                continue
            try:
                institution, charge = self._check_reply(message)
            except ValueError as err:
                meta = message.content.config_records.get(META)
                claimed = meta.get("institution") if meta is not None else None
                exclusions.append(
                    ExclusionFact(
                        claimed if isinstance(claimed, str) else None,
                        node_id,
                        REJECTED,
                        f"update rejected: {err}",
                    )
                )
                continue
            charges.append(ChargeFact(institution, charge))
            accepted.append(message)
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
        self._updates = [self._fact(m) for m in accepted]
        return super().aggregate_train(server_round, accepted)

    def _check_reply(self, message: Message) -> tuple[str, PrivacyCharge]:
        """Who sent a reply and what it charged; ``ValueError`` if it breaks the policy."""
        content = message.content
        meta = content.config_records.get(META)
        if meta is None or not isinstance(meta.get("institution"), str):
            raise ValueError(f"no '{META}.institution' in the reply")
        record = content.config_records.get(PRIVACY)
        if record is None:
            raise ValueError(f"no '{PRIVACY}' record in the reply")
        charge = PrivacyCharge.from_record(record)
        if self.privacy.dp and not charge.dp:
            raise ValueError("trained without DP, but the policy requires DP")
        if charge.dp and charge.epsilon > self.privacy.epsilon * (1 + 1e-9):
            raise ValueError(
                f"reports epsilon {charge.epsilon:.4f}, past the budget {self.privacy.epsilon}"
            )
        return str(meta["institution"]), charge

    def _fact(self, message: Message) -> UpdateFact:
        content = message.content
        metrics = content.metric_records["metrics"]
        payload = arrays_to_bytes(arrays_of(content.array_records[self.arrayrecord_key]))
        return UpdateFact(
            institution=str(content.config_records[META]["institution"]),
            num_examples=int(metrics[self.weighted_by_key]),  # type: ignore[arg-type]
            train_loss=float(metrics.get("train-loss", float("nan"))),  # type: ignore[arg-type]
            update_sha256=hashlib.sha256(payload).hexdigest(),
            update_bytes=len(payload),
            train_seconds=float(metrics.get("train-seconds", float("nan"))),  # type: ignore[arg-type]
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
        if self.ledger is not None and self.run_id is not None:
            with self.ledger.session() as session:
                record_round(
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
        log.info("round %d: validation accuracy %.4f, loss %.4f", server_round, accuracy, loss)
        return MetricRecord({"loss": loss, "accuracy": accuracy})


def _describe(exclusion: ExclusionFact) -> str:
    who = exclusion.institution or f"node {exclusion.node_id}"
    kind = "privacy budget" if exclusion.code == BUDGET_EXHAUSTED else "excluded"
    return f"{who} [{kind}]: {exclusion.reason}"

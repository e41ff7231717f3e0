"""FedAvg that records every round in the ledger and checkpoints the global model."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.model import arrays_sha256, arrays_to_bytes
from common.records import Arrays, arrays_of
from server.checkpoint import save_checkpoint
from server.ledger import Ledger, UpdateFact, record_round

__all__ = ["LedgerFedAvg", "RoundFailed"]

log = logging.getLogger(__name__)

Evaluator = Callable[[Arrays], tuple[float, float]]

META_KEY = "meta"


class RoundFailed(RuntimeError):
    """Fewer nodes than the policy's minimum returned a usable update."""


class LedgerFedAvg(FedAvg):
    """Flower's FedAvg (weighted by ``num-examples``) plus ledger and checkpoints.

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
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(
        self,
        *,
        ledger: Ledger | None,
        run_id: int | None,
        evaluator: Evaluator,
        checkpoint_dir: Path | None,
        min_nodes: int,
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
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        if len(valid) < self.min_nodes:
            reasons = "; ".join(
                f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()
            )
            raise RoundFailed(
                f"round {server_round}: {len(valid)} of the required {self.min_nodes} "
                f"nodes returned an update" + (f" ({reasons})" if reasons else "")
            )
        self._updates = [self._fact(m) for m in valid]
        return super().aggregate_train(server_round, replies)

    def _fact(self, message: Message) -> UpdateFact:
        content = message.content
        meta = content.config_records.get(META_KEY)
        if meta is None or not isinstance(meta.get("institution"), str):
            raise RoundFailed(
                f"node {message.metadata.src_node_id} sent an update without "
                f"'{META_KEY}.institution'"
            )
        metrics = content.metric_records["metrics"]
        payload = arrays_to_bytes(arrays_of(content.array_records[self.arrayrecord_key]))
        return UpdateFact(
            institution=str(meta["institution"]),
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

"""The FedCommons ClientApp: thin handlers over :mod:`client.task`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.receipts import accept_receipts, record_sent
from client.sealing import seal_update
from client.task import ClientSetup, evaluate_global, train_round
from common.envelope import ENVELOPE, envelope_record
from common.identity import ParticipantState
from common.model import arrays_sha256
from common.privacy import BudgetExhausted
from common.protocol import BAD_INPUT, BUDGET_EXHAUSTED, META, RECEIPT_REJECTED, Refusal
from common.receipts import RECEIPTS, ReceiptError
from common.records import arrays_of

__all__ = ["app"]

app = ClientApp()


def _refuse(message: Message, code: int, node_config: Mapping[str, Any], err: Exception) -> Message:
    institution = node_config.get("institution")
    refusal = Refusal(institution if isinstance(institution, str) else None, str(err))
    return Message(Error(code=code, reason=refusal.to_reason()), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received global model on this institution's data, within its budget."""
    started = time.perf_counter()
    try:
        setup = ClientSetup.from_context(context)
        receipts = message.content.config_records.get(RECEIPTS)
        if receipts is not None:  # for the rounds before: checked before anything else
            accept_receipts(setup.identity(), setup.institution, receipts)
        global_weights = arrays_of(message.content.array_records["arrays"])
        config = message.content.config_records["config"]
        outcome = train_round(setup, global_weights, config)
        sealing = time.perf_counter()
        envelope = seal_update(
            setup.identity(),
            institution=setup.institution,
            weights=outcome.weights,
            charge=outcome.charge,
            num_examples=len(setup.data),
            run_id=context.run_id,
            server_round=int(config.get("server-round", 0)),  # type: ignore[arg-type]
            model_sha256=arrays_sha256(global_weights),
            config=config,
        )
        seal_seconds = time.perf_counter() - sealing
        record_sent(setup.identity(), envelope)
    except ReceiptError as err:
        return _refuse(message, RECEIPT_REJECTED, context.node_config, err)
    except BudgetExhausted as err:
        return _refuse(message, BUDGET_EXHAUSTED, context.node_config, err)
    except ValueError as err:
        # DataError, TextDataError, BertError, PolicyError, PrivacyError,
        # KeyFileError, or global weights that do not fit this node's model.
        return _refuse(message, BAD_INPUT, context.node_config, err)
    # Only the sealed update leaves: the weights and the privacy charge are
    # inside the envelope (the charge in its signed header).
    content = RecordDict(
        {
            ENVELOPE: envelope_record(envelope),
            "metrics": MetricRecord(
                {
                    "train-loss": outcome.result.loss,
                    "train-seconds": time.perf_counter() - started,
                    "seal-seconds": seal_seconds,
                }
            ),
        }
    )
    return Message(content, reply_to=message)


@app.query()
def query(message: Message, context: Context) -> Message:
    """Verify and store the receipts the server sends after the last round."""
    receipts = message.content.config_records.get(RECEIPTS)
    state_dir = context.node_config.get("state-dir")
    institution = context.node_config.get("institution")
    if receipts is None or not isinstance(state_dir, str) or not isinstance(institution, str):
        reason = "a query without receipts, or a node config without state-dir and institution"
        return _refuse(message, BAD_INPUT, context.node_config, ValueError(reason))
    try:
        stored = accept_receipts(ParticipantState(Path(state_dir)), institution, receipts)
    except ReceiptError as err:
        return _refuse(message, RECEIPT_REJECTED, context.node_config, err)
    return Message(
        RecordDict({"metrics": MetricRecord({"receipts-stored": len(stored)})}),
        reply_to=message,
    )


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global model on this institution's data."""
    try:
        setup = ClientSetup.from_context(context)
    except ValueError as err:  # bad data, policy or checkpoint, as for train
        return _refuse(message, BAD_INPUT, context.node_config, err)
    result = evaluate_global(setup, arrays_of(message.content.array_records["arrays"]))
    metrics = MetricRecord(
        {"num-examples": result.num_examples, "loss": result.loss, "accuracy": result.accuracy}
    )
    return Message(
        RecordDict({"metrics": metrics, META: ConfigRecord({"institution": setup.institution})}),
        reply_to=message,
    )

"""The FedCommons ClientApp: thin handlers over :mod:`client.task`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.accountant import BudgetExhausted
from client.enrolment import ParticipantState
from client.node_config import node_config_of
from client.owed import acknowledged_of, forget, owed, owed_record
from client.receipts import accept_receipts, receipt_book, record_sent
from client.sealing import seal_update
from client.task import ClientSetup, RoundOutcome, evaluate_global, train_round
from client.witnessing import take_witnesses
from common.arrays import Arrays, arrays_of, arrays_sha256
from common.envelope import envelope_record
from common.protocol import (
    ARRAYS,
    CHARGES_RECORDED,
    CONFIG,
    ENVELOPE,
    ESTABLISHED_SIZE,
    META,
    METRICS,
    NUM_EXAMPLES,
    OWED_CHARGES,
    RECEIPTS,
    RECEIPTS_PENDING,
    RECEIPTS_STORED,
    SEAL_SECONDS,
    TRAIN_LOSS,
    TRAIN_SECONDS,
    ExclusionCode,
    NodeConfig,
    NodeConfigError,
    Refusal,
    TrainConfig,
)
from common.receipts import ReceiptError
from common.witness import COSIGNATURES, WITNESSES, cosignature_record

__all__ = ["Outgoing", "app", "honest_update", "train_sending"]

app = ClientApp()

Outgoing = Callable[[ClientSetup, Arrays, RoundOutcome], tuple[Arrays, int]]
"""What a node sends of its trained round: ``(setup, global weights, outcome) -> (weights,
examples claimed)``, sealed and signed with its own key. The product sends
:func:`honest_update`; only tests send anything else (``tests/support/hostile_client_app.py``,
an authentic member that attacks, to try the server's defences on real Flower processes)."""


def honest_update(
    setup: ClientSetup, global_weights: Arrays, outcome: RoundOutcome
) -> tuple[Arrays, int]:
    """The weights this node trained and the number of records it holds."""
    return outcome.weights, len(setup.data)


def _refuse(message: Message, code: ExclusionCode, context: Context, err: Exception) -> Message:
    try:
        node_config: Mapping[str, Any] = node_config_of(context)
    except NodeConfigError:  # a virtual node without its roster: the reason says so
        node_config = {}
    institution = node_config.get("institution")
    refusal = Refusal(institution if isinstance(institution, str) else None, str(err))
    return Message(Error(code=int(code), reason=refusal.to_reason()), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received global model on this institution's data, within its budget."""
    return train_sending(message, context, honest_update)


def train_sending(message: Message, context: Context, outgoing: Outgoing) -> Message:
    """The train handler, sealing what ``outgoing`` makes of the trained round.

    Parameters
    ----------
    message, context : Message, Context
        The server's train message and this ClientApp's context, as Flower passes them.
    outgoing : Outgoing
        Turns the trained round into the weights and example count sealed
        (:func:`honest_update` in the shipped ClientApp).
    """
    started = time.perf_counter()
    try:
        setup = ClientSetup.from_context(context)
        # The rounds before: their receipts are checked before anything else, and the
        # reply cosigns the head this node now holds.
        accepted = accept_receipts(
            setup.identity(), setup.institution, message.content.config_records.get(RECEIPTS)
        )
        witnesses = message.content.config_records.get(WITNESSES)
        if witnesses is not None:
            take_witnesses(setup.identity(), setup.institution, witnesses, str(context.run_id))
        book = receipt_book(setup.identity()).folder
        forget(book, acknowledged_of(message.content.config_records.get(CHARGES_RECORDED)))
        global_weights = arrays_of(message.content.array_records[ARRAYS])
        config = TrainConfig.from_record(message.content.config_records[CONFIG])
        outcome = train_round(setup, global_weights, config, flower_run_id=context.run_id)
        weights, num_examples = outgoing(setup, global_weights, outcome)
        sealing = time.perf_counter()
        envelope = seal_update(
            setup.identity(),
            institution=setup.institution,
            weights=weights,
            charge=outcome.charge,
            num_examples=num_examples,
            flower_run_id=context.run_id,
            model_sha256=arrays_sha256(global_weights),
            config=config,
        )
        seal_seconds = time.perf_counter() - sealing
        record_sent(setup.identity(), envelope)
        still_owed = owed(book, besides=envelope)  # paid for, not yet in the ledger
    except ReceiptError as err:
        return _refuse(message, ExclusionCode.RECEIPT_REJECTED, context, err)
    except BudgetExhausted as err:
        return _refuse(message, ExclusionCode.BUDGET_EXHAUSTED, context, err)
    except (ValueError, KeyError) as err:
        # DataError, TextDataError, BertError, PolicyError, PrivacyError,
        # KeyFileError, NodeConfigError, a message without its records, or
        # global weights that do not fit this node's model.
        return _refuse(message, ExclusionCode.BAD_INPUT, context, err)
    # Only the sealed update leaves: the weights and the privacy charge are
    # inside the envelope (the charge in its signed header).
    content = RecordDict(
        {
            ENVELOPE: envelope_record(envelope),
            METRICS: MetricRecord(
                {
                    TRAIN_LOSS: outcome.result.loss,
                    TRAIN_SECONDS: time.perf_counter() - started,
                    SEAL_SECONDS: seal_seconds,
                }
            ),
        }
    )
    if accepted.cosignatures:
        content[COSIGNATURES] = cosignature_record(accepted.cosignatures)
    if still_owed:
        content[OWED_CHARGES] = owed_record(still_owed)
    return Message(content, reply_to=message)


@app.query()
def query(message: Message, context: Context) -> Message:
    """Take what the server sends after the last round: its receipts, then the quorum.

    The first query carries the last round's receipts (the reply cosigns their
    checkpoint); the run's final query carries the members' cosignatures on it.
    A receipt of the run still without its quorum then is refused (``no-quorum``):
    the reply is an error naming it.
    """
    records = message.content.config_records
    receipts, recorded = records.get(RECEIPTS), records.get(CHARGES_RECORDED)
    witnesses = records.get(WITNESSES)
    try:
        node = NodeConfig.from_mapping(node_config_of(context))
        if (receipts is None and recorded is None and witnesses is None) or node.state_dir is None:
            raise ValueError(
                "a query without receipts or witnesses, or a node config without state-dir"
            )
        state = ParticipantState(node.state_dir)
        accepted = accept_receipts(state, node.institution, receipts)
        forget(receipt_book(state).folder, acknowledged_of(recorded))
        witnessing = take_witnesses(state, node.institution, witnesses, str(context.run_id))
        if witnessing.refused:
            raise ReceiptError("; ".join(witnessing.refused))
    except ReceiptError as err:
        return _refuse(message, ExclusionCode.RECEIPT_REJECTED, context, err)
    except ValueError as err:
        return _refuse(message, ExclusionCode.BAD_INPUT, context, err)
    metrics = MetricRecord(
        {
            RECEIPTS_STORED: len(accepted.stored),
            RECEIPTS_PENDING: len(witnessing.pending),
            ESTABLISHED_SIZE: witnessing.established_size,
        }
    )
    content = RecordDict({METRICS: metrics})
    if accepted.cosignatures:
        content[COSIGNATURES] = cosignature_record(accepted.cosignatures)
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global model on this institution's data."""
    try:
        setup = ClientSetup.from_context(context)
    except ValueError as err:  # bad data, policy or base model, as for train
        return _refuse(message, ExclusionCode.BAD_INPUT, context, err)
    result = evaluate_global(setup, arrays_of(message.content.array_records[ARRAYS]))
    metrics = MetricRecord(
        {NUM_EXAMPLES: result.num_examples, "loss": result.loss, "accuracy": result.accuracy}
    )
    return Message(
        RecordDict({METRICS: metrics, META: ConfigRecord({"institution": setup.institution})}),
        reply_to=message,
    )

"""The FedCommons ClientApp: thin handlers over :mod:`client.task`."""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.task import ClientSetup, evaluate_global, train_round
from common.data import DataError
from common.policy import PolicyError
from common.records import arrays_of, record_of

__all__ = ["app"]

app = ClientApp()

# Error code for input the participant must fix (bad data or configuration).
BAD_INPUT = 400


def _refuse(message: Message, err: Exception) -> Message:
    return Message(Error(code=BAD_INPUT, reason=str(err)), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received global model on this institution's data."""
    try:
        setup = ClientSetup.from_context(context)
    except (DataError, PolicyError) as err:
        return _refuse(message, err)
    started = time.perf_counter()
    weights, result = train_round(
        setup,
        arrays_of(message.content.array_records["arrays"]),
        message.content.config_records["config"],
    )
    content = RecordDict(
        {
            "arrays": record_of(weights),
            "metrics": MetricRecord(
                {
                    "num-examples": len(setup.data),
                    "train-loss": result.loss,
                    "train-seconds": time.perf_counter() - started,
                }
            ),
            "meta": ConfigRecord({"institution": setup.institution}),
        }
    )
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global model on this institution's data."""
    try:
        setup = ClientSetup.from_context(context)
    except (DataError, PolicyError) as err:
        return _refuse(message, err)
    result = evaluate_global(setup, arrays_of(message.content.array_records["arrays"]))
    metrics = MetricRecord(
        {"num-examples": result.num_examples, "loss": result.loss, "accuracy": result.accuracy}
    )
    return Message(
        RecordDict({"metrics": metrics, "meta": ConfigRecord({"institution": setup.institution})}),
        reply_to=message,
    )

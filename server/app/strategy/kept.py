"""A reply as the ServerApp keeps it until its round is recorded, and back again.

What :func:`kept_reply` keeps (:class:`~server.app.snapshots.KeptReply`: the sealed
update, its node and its unsigned metrics) is what :func:`reply_of` turns
back into the train reply it was, for a resumed run to recover the round.
"""

from __future__ import annotations

from flwr.app import Message, MessageType, MetricRecord, RecordDict

from common.envelope import envelope_record
from common.protocol import ENVELOPE, METRICS, SEAL_SECONDS, TRAIN_LOSS, TRAIN_SECONDS
from server.app.snapshots import KeptReply
from server.app.strategy.intake import Accepted

__all__ = ["kept_reply", "reply_of"]


def kept_reply(accepted: Accepted) -> KeptReply:
    """What the server keeps of an accepted reply until its round is recorded."""
    update = accepted.update
    metrics = {TRAIN_LOSS: update.train_loss, TRAIN_SECONDS: update.train_seconds}
    if update.seal_seconds is not None:
        metrics[SEAL_SECONDS] = update.seal_seconds
    return KeptReply(accepted.envelope, accepted.message.metadata.src_node_id, metrics)


def reply_of(reply: KeptReply) -> Message:
    """A kept reply as the train reply it was: its envelope and metrics, from its node."""
    request = Message(RecordDict(), dst_node_id=reply.node_id, message_type=MessageType.TRAIN)
    content = RecordDict(
        {ENVELOPE: envelope_record(reply.envelope), METRICS: MetricRecord(dict(reply.metrics))}
    )
    return Message(content, reply_to=request)

"""The receipt outbox: receipts wait here until the next message to their participant.

A round's receipts ride on the next round's train message, so rounds gain no
exchange; the last round's go out after the run in one query message per
node (:meth:`ReceiptOutbox.deliver_remaining`). A node that answers a message
carrying receipts has had them: it either stored them or refused the round
(code 409, recorded as its exclusion), and sending the same receipt again
would not change that.

Each message also carries the members' cosignatures kept on the checkpoint
its node last cosigned (:data:`common.witness.WITNESSES`), so the node counts
its witness quorum (:mod:`client.quorum`); after the last round's receipts, a
final query per node carries them on the last checkpoint
(:meth:`ReceiptOutbox.deliver_quorum`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.protocol import (
    CHARGES_RECORDED,
    ESTABLISHED_SIZE,
    METRICS,
    RECEIPTS,
    RECEIPTS_PENDING,
    Refusal,
)
from common.receipts import Receipt
from common.witness import WITNESSES, Witnessed, witnessed_record

__all__ = ["ReceiptOutbox", "with_receipts"]

log = logging.getLogger(__name__)

Witnesses = Callable[..., Witnessed | None]
"""``(institution, final=False)``: the cosignatures on the checkpoint its node holds."""


def with_receipts(content: RecordDict, receipts: list[Receipt]) -> RecordDict:
    """A copy of ``content`` that also carries ``receipts`` (JSON, in order)."""
    copy = RecordDict(dict(content))
    copy[RECEIPTS] = ConfigRecord({"receipts": [r.to_json() for r in receipts]})
    return copy


class ReceiptOutbox:
    """Receipts not yet delivered, by participant, and what each message in flight carries."""

    def __init__(self, witnesses: Witnesses | None = None) -> None:
        self.witnesses = witnesses
        """Where the cosignatures on each node's checkpoint come from (none: not sent)."""
        self._pending: dict[str, list[Receipt]] = {}
        self._carrying: dict[int, int] = {}  # node id -> receipts its message carries
        self._recorded: dict[str, list[str]] = {}  # owed charges now in the ledger, by node
        self._carrying_recorded: dict[int, int] = {}

    def acknowledge(self, institution: str, ciphertext_sha256: str) -> None:
        """Tell ``institution``'s node, with its next message, that the ledger holds the
        charge of its update ``ciphertext_sha256`` (it stops reporting it as owed)."""
        owed = self._recorded.setdefault(institution, [])
        if ciphertext_sha256 not in owed:
            owed.append(ciphertext_sha256)

    def pending(self, institution: str) -> list[Receipt]:
        """The receipts ``institution`` is still owed, oldest first."""
        return list(self._pending.get(institution, []))

    def queue(self, receipts: Iterable[Receipt]) -> None:
        """Owe each receipt to its participant."""
        for receipt in receipts:
            self._pending.setdefault(receipt.participant, []).append(receipt)

    def attach(self, message: Message, institution: str | None) -> None:
        """Let ``message`` (to ``institution``'s node) carry what it is owed."""
        receipts = self._pending.get(institution or "", [])
        if receipts:
            message.content = with_receipts(message.content, receipts)
            self._carrying[message.metadata.dst_node_id] = len(receipts)
        witnessed = self.witnesses(institution) if self.witnesses and institution else None
        if witnessed is not None:
            content = RecordDict(dict(message.content))
            content[WITNESSES] = witnessed_record(witnessed)
            message.content = content
        recorded = self._recorded.get(institution or "", [])
        if recorded:
            content = RecordDict(dict(message.content))
            content[CHARGES_RECORDED] = ConfigRecord({"ciphertexts": list(recorded)})
            message.content = content
            self._carrying_recorded[message.metadata.dst_node_id] = len(recorded)

    def answered(self, node_id: int, institution: str | None) -> None:
        """The node answered the message it was sent: what that carried is delivered."""
        count = self._carrying.pop(node_id, 0)
        if count and institution in self._pending:
            del self._pending[institution][:count]
        count = self._carrying_recorded.pop(node_id, 0)
        if count and institution in self._recorded:
            del self._recorded[institution][:count]

    def deliver_remaining(
        self,
        grid: Grid,
        nodes: Mapping[str, int],
        timeout: float | None,
        on_reply: Callable[[str | None, Message], None] | None = None,
    ) -> dict[str, str]:
        """Send what is still owed in one query per node (``nodes``: institution -> node id).

        ``on_reply`` is given each reply with its institution (the server
        keeps the cosignatures it carries).

        Returns
        -------
        dict
            Per participant owed something, ``"stored"``, why its node refused,
            or that it did not answer.
        """
        messages = []
        institution_of = {node: name for name, node in nodes.items()}
        due = {n for n, r in self._pending.items() if r} | {
            n for n, r in self._recorded.items() if r
        }
        for name in sorted(due):
            if name in nodes:
                message = Message(
                    RecordDict(), dst_node_id=nodes[name], message_type=MessageType.QUERY
                )
                self.attach(message, name)
                messages.append(message)
        outcome = {name: "not delivered (no reply)" for name in due}
        if not messages:
            return {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node_id = reply.metadata.src_node_id
            name = institution_of.get(node_id, f"node {node_id}")
            self.answered(node_id, institution_of.get(node_id))
            if on_reply is not None:
                on_reply(institution_of.get(node_id), reply)
            if reply.has_error():
                outcome[name] = Refusal.from_reason(reply.error.reason or "").detail
                log.warning("%s refused its receipts: %s", name, outcome[name])
            else:
                outcome[name] = "stored"
        return outcome

    def deliver_quorum(
        self, grid: Grid, nodes: Mapping[str, int], timeout: float | None
    ) -> dict[str, str]:
        """The run's final query per node: the cosignatures on the checkpoint it holds.

        Each node counts them; a receipt of the run still without its quorum is
        refused (``no-quorum``) and the node answers with that error.

        Returns
        -------
        dict
            Per institution: the size of the largest checkpoint its node holds
            established and how many receipts still wait, why it refused, or
            that it did not answer.
        """
        if self.witnesses is None:
            return {}
        messages = []
        for name, node in sorted(nodes.items()):
            witnessed = self.witnesses(name, True)
            if witnessed is not None:
                content = RecordDict({WITNESSES: witnessed_record(witnessed)})
                messages.append(Message(content, dst_node_id=node, message_type=MessageType.QUERY))
        if not messages:
            return {}
        institution_of = {node: name for name, node in nodes.items()}
        sent = {institution_of[m.metadata.dst_node_id] for m in messages}
        outcome = {name: "no reply" for name in sent}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            name = institution_of.get(reply.metadata.src_node_id, "?")
            if reply.has_error():
                outcome[name] = Refusal.from_reason(reply.error.reason or "").detail
                log.warning("%s refused its receipts at the run's end: %s", name, outcome[name])
                continue
            metrics = reply.content.metric_records.get(METRICS)
            size = metrics.get(ESTABLISHED_SIZE) if metrics is not None else None
            waiting = metrics.get(RECEIPTS_PENDING) if metrics is not None else None
            outcome[name] = f"established up to size {size}, {waiting} receipt(s) pending"
        return outcome

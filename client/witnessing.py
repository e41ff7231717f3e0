"""The members' cosignatures a message brings: counted, and what they establish.

The server sends a node every cosignature it kept on the checkpoint that node
last cosigned (:data:`common.witness.WITNESSES`), with the next train message
and with the queries that close the run. :func:`take_witnesses` counts them
against the run's quorum (:mod:`client.quorum`): a checkpoint that reaches it
is established, with the receipts under it; at the run's final message a
receipt still pending is refused (``no-quorum``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flwr.app import ConfigRecord

from client.enrolment import ParticipantState
from client.quorum import (
    Established,
    Quorum,
    cosigned_head,
    count,
    establish,
    established_size,
    pending,
)
from client.receipts import receipt_book
from common.evidence import record_checkpoints
from common.receipts import Receipt, ReceiptError
from common.witness import witnessed_of

__all__ = ["Witnessing", "take_witnesses"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Witnessing:
    """What the members' cosignatures in a message did.

    ``quorum``: the count on the checkpoint the message named, if this node
    holds it; ``established``: that checkpoint, if it is now established;
    ``pending``: the receipts still waiting for their quorum; ``refused``: why
    each receipt of the run still pending at its final message was refused.
    """

    quorum: Quorum | None
    established: Established | None
    pending: list[Receipt]
    refused: list[str]
    established_size: int
    """The largest checkpoint this node holds established, after this message (0: none)."""


def take_witnesses(
    state: ParticipantState,
    institution: str,
    record: ConfigRecord | None,
    flower_run_id: str | None = None,
) -> Witnessing:
    """Count the members' cosignatures in ``record`` on the checkpoint this node holds.

    A checkpoint with its quorum is established (:mod:`client.quorum`), with
    every receipt under it or an earlier one. At the run's ``final`` message,
    each receipt of Flower run ``flower_run_id`` still pending is refused
    (``no-quorum``) and moved to ``refused/``. With ``flower_run_id``, only that
    run's receipts are read (``pending`` lists those): every message runs
    this, and a node's folder keeps every run's receipts.

    Raises
    ------
    ReceiptError
        ``record`` is malformed.
    """
    book = receipt_book(state)
    size = established_size(book.folder)
    mine = book.receipts(flower_run_id)
    if record is None:
        return Witnessing(None, None, pending(mine, size), [], size)
    try:
        witnessed = witnessed_of(record)
    except ValueError as err:
        raise ReceiptError(f"the server's witnesses record is malformed: {err}") from None
    quorum = made = None
    key = (witnessed.tree_size, witnessed.root)
    held = [r for r in mine if (r.tree_head.tree_size, r.tree_head.root) == key]
    if not held and flower_run_id is not None and witnessed.tree_size > size:
        # the head it last cosigned came with an earlier Flower run (a resumed run)
        held = [r for r in book.receipts() if (r.tree_head.tree_size, r.tree_head.root) == key]
    members = held[-1].members() if held else None
    if held and members is not None and held[-1].tree_head.checkpoint is not None:
        quorum = count(held[-1].tree_head, members, institution, witnessed.lines)
        for why in quorum.ignored:
            log.warning("a cosignature the server sent does not count: %s", why)
        made = establish(book.folder, quorum, size)
        if made is not None:
            size = made.tree_size
            record_checkpoints(book.folder, [cosigned_head(held[-1].tree_head, quorum)], [])
    waiting = pending(mine, size)
    refused = []
    if witnessed.final:
        for receipt in waiting:
            reason = (
                f"no-quorum: the receipt for run {receipt.run_id} round {receipt.round} is under "
                f"a checkpoint of size {receipt.tree_head.tree_size} that the run's members "
                "never established before its last message"
                + (f" ({quorum.describe()})" if quorum is not None else
                   " (no member cosignatures this node could count reached it)")
                + ": the operator may have shown this node a fork the others did not see"
            )  # fmt: skip
            book.withdraw(receipt, "no-quorum", reason)
            refused.append(reason)
        waiting = []
    return Witnessing(quorum, made, waiting, refused, size)

"""Receiving receipts: verify each against the pinned operator key, then keep it.

A receipt (:mod:`common.receipts`) arrives with the next message after a
round: the next train message, or a query after the last round. The node
verifies the operator's signature (the key pinned in ``consortium.json`` at
enrolment), the inclusion proof of its own update's ledger entry, the
consistency proof from the last head it was given, and that the entry
records the very update it sent. Only then is the receipt stored, in
``STATE/receipts/``; a receipt that fails is refused (code 409) and the node
does not train in that round.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord

from common.envelope import Envelope
from common.identity import Consortium, EnrolmentError, ParticipantState
from common.receipts import Receipt, ReceiptBook, ReceiptError

__all__ = ["accept_receipts", "receipt_book", "record_sent"]


def receipt_book(state: ParticipantState) -> ReceiptBook:
    """The node's receipts folder: ``STATE/receipts``."""
    return ReceiptBook(state.root / "receipts")


def record_sent(state: ParticipantState, envelope: Envelope) -> Path:
    """Remember the update just sealed, so its receipt can be matched to it."""
    return receipt_book(state).record_sent(envelope)


def accept_receipts(state: ParticipantState, institution: str, record: ConfigRecord) -> list[Path]:
    """Verify and store every receipt in ``record``, in order; return the files written.

    Raises
    ------
    ReceiptError
        A receipt is malformed, does not verify, is for someone else, or
        records another update than the one this node sent.
    """
    texts = record.get("receipts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ReceiptError("the server's receipts record holds no list of JSON receipts")
    try:
        operator = Consortium.load(state.consortium).operator_key
    except EnrolmentError as err:
        raise ReceiptError(f"cannot check receipts without the pinned operator key: {err}") from err
    book = receipt_book(state)
    stored = []
    for i, text in enumerate(texts):
        receipt = Receipt.from_json(str(text), f"receipt {i + 1} from the server")
        stored.append(book.accept(receipt, operator, institution))
    return stored

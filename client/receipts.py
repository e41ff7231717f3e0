"""A node's receipt book: verify each receipt against the pinned operator key, then keep it.

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

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ConfigRecord

from client.enrolment import ParticipantState
from common.atomic import write_atomic
from common.consortium import Consortium, EnrolmentError
from common.envelope import Envelope, UpdateHeader
from common.receipts import Receipt, ReceiptError

__all__ = ["ReceiptBook", "accept_receipts", "receipt_book", "record_sent"]


class ReceiptBook:
    """A participant's receipts folder: what it sent, and the receipts it accepted.

    ``sent/run-R-round-NNNN.json`` records the hash and signature of each update
    the node sealed; ``run-R-round-NNNN.json`` is the verified receipt for it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def sent_folder(self) -> Path:
        return self.folder / "sent"

    def record_sent(self, envelope: Envelope) -> Path:
        """Remember what was sent, so a receipt can be matched to this node's own update."""
        header = UpdateHeader.parse(envelope.header)
        path = self.sent_folder / f"run-{header.run_id}-round-{header.round:04d}.json"
        doc = {
            "participant": header.participant,
            "ciphertext_sha256": envelope.ciphertext_sha256(),
            "signature": base64.b64encode(envelope.signature).decode(),
        }
        write_atomic(path, json.dumps(doc, sort_keys=True, indent=2) + "\n")
        return path

    def receipts(self, run_id: str | None = None) -> list[Receipt]:
        """The receipts accepted so far, of every run or of ``run_id`` only."""
        pattern = f"run-{run_id}-round-*.json" if run_id is not None else "run-*.json"
        return [
            Receipt.from_json(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(self.folder.glob(pattern))
        ]

    def accept(self, receipt: Receipt, operator: Ed25519PublicKey, participant: str) -> Path:
        """Verify ``receipt`` as ``participant`` and store it; :class:`ReceiptError` if it fails.

        Beyond :meth:`Receipt.verify`, the entry must record the very update this
        node sent (its ciphertext hash and signature), and a consistency proof
        must start from a head this node really holds.
        """
        if receipt.participant != participant:
            raise ReceiptError(f"a receipt for {receipt.participant!r} was sent to {participant!r}")
        receipt.verify(operator)
        sent_path = self.sent_folder / receipt.file_name
        try:
            sent = json.loads(sent_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ReceiptError(
                f"a receipt for run {receipt.run_id} round {receipt.round}, but this node has "
                f"no record of sending an update then ({sent_path})"
            ) from None
        row = receipt.update()
        for column in ("ciphertext_sha256", "signature"):
            if row.get(column) != sent.get(column):
                raise ReceiptError(
                    f"the receipt's ledger entry {receipt.seq} for round {receipt.round} records "
                    f"another update than the one this node sent ({column} differs)"
                )
        if receipt.previous_size is not None:  # the head it extends, if this node holds it
            # One ledger, one tree: a head of the same size held from any run (a run
            # resumed after a crash is a new Flower run) must have the same root.
            held = {r.tree_head.tree_size: r.tree_head.root for r in self.receipts()}
            if (
                receipt.previous_size in held
                and held[receipt.previous_size] != receipt.previous_root
            ):
                raise ReceiptError(
                    f"the receipt for round {receipt.round} extends a head of size "
                    f"{receipt.previous_size} with another root than the one this node holds: "
                    "the ledger was forked"
                )
        path = self.folder / receipt.file_name
        text = receipt.to_json()
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return path  # delivered again: already stored
        if path.exists():
            raise ReceiptError(
                f"{path} already holds another receipt for run {receipt.run_id} round "
                f"{receipt.round}: the operator signed two different ledgers"
            )
        write_atomic(path, text)
        return path


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

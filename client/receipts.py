"""A node's receipt book: verify each receipt against the pinned operator key, keep it, cosign.

A receipt (:mod:`common.receipts`) arrives with the next message after a
round: the next train message, or a query after the last round. The node
verifies the operator's signature on the checkpoint (the key and log origin
pinned in ``consortium.json`` at enrolment), the inclusion proof of its own
update's ledger entry, that the entry records the very update it sent, and,
once it holds any head, a **mandatory** consistency proof from the last
(largest) head it holds: the ledger may only ever grow from what this node
has seen. Only then is the receipt stored, in ``STATE/receipts/``, and the
node cosigns its checkpoint (C2SP ``cosignature/v1``, with its own key): the
server keeps that cosignature as the node's witness that the log is
append-only (:mod:`ledger.cosignatures`). A kept receipt is still *pending*
until the run's members vouch for its checkpoint (:mod:`client.quorum`,
:mod:`client.witnessing`).

A receipt that fails is refused (code 409; the node does not train in that
round and cosigns nothing) and recorded in ``STATE/receipts/refused/``: a
fork (a head that does not extend the held one, or another head for a round
already receipted) keeps both operator-signed heads there as evidence.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flwr.app import ConfigRecord

from client.enrolment import ParticipantState
from client.owed import keep_sealed
from client.own_entries import Misstated, check_own_entries
from client.quorum import member_problem
from common.atomic import write_atomic
from common.consortium import Consortium, EnrolmentError
from common.envelope import Envelope
from common.evidence import record_checkpoints
from common.keys import encode_public, passphrase_from_env
from common.note import cosign
from common.receipts import ForkError, Receipt, ReceiptError, TreeHead
from common.sent import SentUpdate
from common.witness import Cosigned

__all__ = [
    "Accepted",
    "Kept",
    "ReceiptBook",
    "accept_receipts",
    "receipt_book",
    "record_sent",
]


@dataclass(frozen=True)
class Accepted:
    """What :func:`accept_receipts` stored, and the cosignatures the reply carries back."""

    stored: list[Path]
    cosignatures: list[Cosigned]


@dataclass(frozen=True)
class Kept:
    """A receipt this node keeps: its file, and its head as checked."""

    path: Path
    head: TreeHead


class ReceiptBook:
    """A participant's receipts folder: what it sent, and the receipts it accepted.

    ``sent/run-R-round-NNNN.json`` records the hash and signature of each update
    the node sealed; ``run-R-round-NNNN.json`` is the verified receipt for it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._latest: TreeHead | None = None
        self._latest_read = False

    @property
    def sent_folder(self) -> Path:
        return self.folder / "sent"

    def record_sent(self, envelope: Envelope) -> Path:
        """Remember what was sent, so a receipt can be matched to this node's own update."""
        sent = SentUpdate.of(envelope)
        path = write_atomic(self.sent_folder / sent.file_name, sent.to_json())
        keep_sealed(self.folder, envelope)  # until a receipt or the server covers its charge
        return path

    def receipts(self, flower_run_id: str | None = None) -> list[Receipt]:
        """The receipts accepted so far, of every Flower run or of ``flower_run_id`` only."""
        pattern = f"run-{flower_run_id}-round-*.json" if flower_run_id is not None else "run-*.json"
        return [
            Receipt.from_json(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(self.folder.glob(pattern))
        ]

    def latest_head(self) -> TreeHead | None:
        """The largest signed head this node holds (of any run: one ledger, one tree).

        Read from the receipts once per book; :meth:`accept` keeps it current.
        """
        if not self._latest_read:
            heads = [r.tree_head for r in self.receipts()]
            self._latest = max(heads, key=lambda h: h.tree_size) if heads else None
            self._latest_read = True
        return self._latest

    def accept(
        self,
        receipt: Receipt,
        operator: Ed25519PublicKey,
        participant: str,
        origin: str | None = None,
    ) -> Path:
        """Verify ``receipt`` as ``participant`` and store it; :class:`ReceiptError` if it fails.

        Beyond :meth:`Receipt.verify`, the entry must record the very update this
        node sent (its ciphertext hash and signature), and the head must extend
        the largest one this node holds, by a consistency proof from exactly that
        head. A refusal is recorded under ``refused/``.
        """
        return self.keep(receipt, operator, participant, origin).path

    def keep(
        self,
        receipt: Receipt,
        operator: Ed25519PublicKey,
        participant: str,
        origin: str | None = None,
        own_key: str | None = None,
    ) -> Kept:
        """:meth:`accept`, returning the stored file and the head as it was checked and kept.

        A receipt delivered again is not checked again: the head kept is the
        stored copy's, whatever text the repeated delivery carries. The run's
        members entry, if carried, must list this node (with ``own_key``, its
        signing key in base64, when given) and keep every member's pinned key
        (:func:`client.quorum.member_problem`).
        """
        if receipt.participant != participant:
            raise ReceiptError(f"a receipt for {receipt.participant!r} was sent to {participant!r}")
        path = self.folder / receipt.file_name
        latest = self.latest_head()
        if path.exists():
            held = Receipt.from_json(path.read_text(encoding="utf-8"), str(path))
            if (held.seq, held.payload, held.tree_head.tree_size, held.tree_head.root) == (
                receipt.seq,
                receipt.payload,
                receipt.tree_head.tree_size,
                receipt.tree_head.root,
            ):
                return Kept(path, held.tree_head)  # delivered again: already checked
            self._refuse(
                receipt,
                latest,
                "fork",
                f"{path} already holds another receipt for run {receipt.run_id} round "
                f"{receipt.round}: the operator signed two different ledgers",
            )
        try:
            receipt.verify(operator, origin)
        except ForkError as err:
            self._refuse(receipt, latest, "fork", str(err))
        except ReceiptError as err:
            self._refuse(receipt, latest, "invalid", str(err))
        self._check_sent(receipt, latest)
        if latest is not None:
            self._check_extends(receipt, latest)
        problem = member_problem(receipt, participant, own_key, self.folder)
        if problem is not None:
            self._refuse(receipt, latest, problem.partition(":")[0], problem)
        write_atomic(path, receipt.to_json())
        if latest is None or receipt.tree_head.tree_size > latest.tree_size:
            self._latest = receipt.tree_head
        return Kept(path, receipt.tree_head)

    def _check_sent(self, receipt: Receipt, latest: TreeHead | None) -> None:
        """Refuse unless the receipt's entries state the update this node sent, its own charge
        and its value as recomputed (:mod:`client.own_entries`): ``misstated`` if not."""
        sent_path = self.sent_folder / receipt.file_name
        try:
            sent = SentUpdate.read(sent_path)
        except (OSError, ValueError):
            self._refuse(
                receipt,
                latest,
                "invalid",
                f"a receipt for run {receipt.run_id} round {receipt.round}, but this node has "
                f"no record of sending an update then ({sent_path})",
            )
        try:
            check_own_entries(receipt, sent)
        except Misstated as err:
            self._refuse(receipt, latest, "misstated", str(err), err.detail())
        except ReceiptError as err:
            self._refuse(receipt, latest, "invalid", str(err))

    def _check_extends(self, receipt: Receipt, latest: TreeHead) -> None:
        """Refuse unless the receipt's head provably extends ``latest``, the largest held."""
        head, size = receipt.tree_head, latest.tree_size
        what = f"the receipt for round {receipt.round} (a tree of size {head.tree_size})"
        if head.tree_size < size:
            self._refuse(
                receipt, latest, "stale", f"{what} is older than the head of size {size} held"
            )
        if head.tree_size == size:
            if head.root != latest.root:
                self._refuse(
                    receipt,
                    latest,
                    "fork",
                    f"{what} has another root than the head of the same size this node holds: "
                    "the ledger was forked",
                )
            return
        if receipt.previous_size is None or receipt.consistency is None:
            self._refuse(
                receipt,
                latest,
                "missing-consistency",
                f"{what} carries no consistency proof from the head of size {size} this node "
                "holds, so nothing shows the ledger still extends it",
            )
        if receipt.previous_size != size:
            self._refuse(
                receipt,
                latest,
                "missing-consistency",
                f"{what} proves consistency from size {receipt.previous_size}, not from the "
                f"head of size {size} this node holds",
            )
        if receipt.previous_root != latest.root:
            self._refuse(
                receipt,
                latest,
                "fork",
                f"{what} extends a head of size {size} with another root than the one this "
                "node holds: the ledger was forked",
            )

    def _refuse(
        self,
        receipt: Receipt,
        latest: TreeHead | None,
        kind: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Record why ``receipt`` was refused (with the head held, as evidence); raise.

        ``detail``: what a ``misstated`` refusal found (entry, field, both values).
        """
        self._record_refusal(receipt, latest, kind, reason, detail)
        raise (ForkError if kind == "fork" else ReceiptError)(reason)

    def _record_refusal(
        self,
        receipt: Receipt,
        latest: TreeHead | None,
        kind: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> Path:
        """Write the refusal record of ``receipt`` to ``refused/``; return its path."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        record = {
            "kind": kind,
            "reason": reason,
            "refused_at": stamp,
            "held_head": asdict(latest) if latest is not None else None,
            "receipt": receipt.to_dict(),
        }
        if detail is not None:
            record["misstated"] = detail
        return write_atomic(
            self.folder / "refused" / f"{stamp}-{receipt.file_name}",
            json.dumps(record, sort_keys=True, indent=2) + "\n",
        )

    def withdraw(self, receipt: Receipt, kind: str, reason: str) -> Path:
        """Refuse a receipt kept earlier: its record moves to ``refused/`` with ``reason``.

        The head this node holds falls back to the largest of the receipts left.
        """
        held = self.latest_head()
        path = self._record_refusal(receipt, held, kind, reason)
        (self.folder / receipt.file_name).unlink(missing_ok=True)
        self._latest_read = False
        return path

    def refusals(self) -> list[dict[str, Any]]:
        """The refusals recorded so far, oldest first."""
        folder = self.folder / "refused"
        return [
            json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))
        ]


def cosign_heads(
    heads: list[TreeHead], institution: str, signer: Ed25519PrivateKey, now: int | None = None
) -> list[Cosigned]:
    """This node's ``cosignature/v1`` on each checkpoint in ``heads`` (JSON heads are skipped)."""
    when = int(time.time()) if now is None else now
    found = []
    for head in heads:
        if head.checkpoint is None:
            continue
        line = cosign(head.body().decode("utf-8"), institution, signer, when)
        found.append(Cosigned(head.tree_size, head.root, line.line()))
    return found


def receipt_book(state: ParticipantState) -> ReceiptBook:
    """The node's receipts folder: ``STATE/receipts``."""
    return ReceiptBook(state.root / "receipts")


def record_sent(state: ParticipantState, envelope: Envelope) -> Path:
    """Remember the update just sealed, so its receipt can be matched to it."""
    return receipt_book(state).record_sent(envelope)


def accept_receipts(
    state: ParticipantState, institution: str, record: ConfigRecord | None
) -> Accepted:
    """Verify and store every receipt in ``record``, in order; cosign what this node now holds.

    The cosignatures cover each checkpoint accepted now and, always, the
    largest one held: every reply tells the server which head this node
    holds, so its next consistency proof starts there (``record`` may be
    ``None``: nothing to accept, the held head is still cosigned).

    Raises
    ------
    ReceiptError
        A receipt is malformed, does not verify, is for someone else,
        records another update than the one this node sent, or does not
        provably extend the head this node holds (:class:`ForkError` for a fork).
    """
    texts = record.get("receipts") if record is not None else []
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ReceiptError("the server's receipts record holds no list of JSON receipts")
    book = receipt_book(state)
    stored, heads = [], []
    signer = None
    if texts:
        try:
            consortium = Consortium.load(state.consortium)
        except EnrolmentError as err:
            raise ReceiptError(
                f"cannot check receipts without the pinned operator key: {err}"
            ) from err
        signer = state.load_signing_key(passphrase_from_env())
        own_key = encode_public(signer.public_key())
        for i, text in enumerate(texts):
            receipt = Receipt.from_json(str(text), f"receipt {i + 1} from the server")
            kept = book.keep(
                receipt, consortium.operator_key, institution, consortium.origin, own_key
            )
            stored.append(kept.path)
            heads.append(kept.head)
    latest = book.latest_head()
    if latest is not None and all(h.tree_size != latest.tree_size for h in heads):
        heads.append(latest)
    if not any(h.checkpoint is not None for h in heads):
        return Accepted(stored, [])
    signer = signer or state.load_signing_key(passphrase_from_env())
    cosigned = cosign_heads(heads, institution, signer)
    checkpoints = [head for head in heads if head.checkpoint is not None]
    shown = heads[: len(stored)]  # the latest held was shown before: logged then
    record_checkpoints(book.folder, shown, zip(checkpoints, cosigned, strict=True))
    return Accepted(stored, cosigned)

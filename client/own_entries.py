"""A node checks its own ledger entries in a receipt against what it sent and computed.

The operator signs the ledger, so an operator could record a member's update
with another example count, charge its dataset another ε, or credit it
another contribution value, and sign the result. A receipt carries the
member's own entries with inclusion proofs under the signed head; before
keeping it the node compares each with its own record of the update
(:class:`~common.sent.SentUpdate`, written when it sealed the update):

- the update entry: ``ciphertext_sha256`` and ``signature`` (the very
  update it sent) and ``num_examples`` (what its signed header states);
- the privacy charge entry: the dataset's manifest hash and every figure its
  own accountant computed for the round: the noise multiplier, q
  (``sample_rate``), ``steps``, ε, δ, the accountant, the clipping norm and
  the accountant history's hash;
- the contribution value entry: against the value the node recomputes from
  the round's valuation entry (players and coalition utilities) with the
  same integer maths as the server (:mod:`common.shapley`).

A mismatch raises :class:`Misstated`, naming the entry, the field and both
values; the receipt book refuses the receipt as ``misstated`` and keeps it,
signed head and proofs included, as evidence. An entry the receipt does not
carry (a server before these fields, or a round not valued) is not checked.
"""

from __future__ import annotations

import json
from typing import Any

from common.receipts import Receipt, ReceiptError
from common.sent import SentUpdate
from common.shapley import recompute_values

__all__ = ["CHARGE_FIELDS", "Misstated", "check_own_entries"]

CHARGE_FIELDS = (
    "dataset_sha256",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "epsilon",
    "delta",
    "dp",
    "accountant",
    "max_grad_norm",
    "history_sha256",
)
"""The charge entry's fields a node compares with its own charge, in this order."""


class Misstated(ReceiptError):
    """A receipt whose ledger entry misstates this node's own update, charge or value."""

    def __init__(self, seq: int | None, field: str, ledger: object, own: object, says: str) -> None:
        self.seq, self.field, self.ledger, self.own = seq, field, ledger, own
        super().__init__(f"misstated: the ledger's entry {seq} records {field} {ledger} {says}")

    def detail(self) -> dict[str, Any]:
        """The mismatch, for the refusal's evidence file."""
        return {"entry": self.seq, "field": self.field, "ledger": self.ledger, "own": self.own}


def check_own_entries(receipt: Receipt, sent: SentUpdate) -> None:
    """Raise :class:`Misstated` unless every entry ``receipt`` carries agrees with ``sent``.

    ``receipt`` must already verify (:meth:`Receipt.verify`): its entries are
    then the signed ledger's.
    """
    _check_update(receipt, sent)
    _check_charge(receipt, sent)
    _check_value(receipt)


def _check_update(receipt: Receipt, sent: SentUpdate) -> None:
    row = receipt.update()
    own: dict[str, object] = {
        "ciphertext_sha256": sent.ciphertext_sha256,
        "signature": sent.signature,
    }
    if sent.num_examples is not None:
        own["num_examples"] = sent.num_examples
    for field, value in own.items():
        if row.get(field) != value:
            raise Misstated(
                receipt.seq,
                field,
                row.get(field),
                value,
                f"for this node's round {receipt.round} update; this node sent {value}",
            )


def _same(ledger: object, own: object) -> bool:
    """Whether a payload's value (floats as their ``repr`` strings) is the node's own."""
    if isinstance(own, bool) or isinstance(ledger, bool):
        return ledger is own
    if isinstance(own, float) or (isinstance(own, str) and own == "inf"):
        try:
            return float(str(ledger)) == float(own)
        except ValueError:
            return False
    return ledger == own


def _check_charge(receipt: Receipt, sent: SentUpdate) -> None:
    row = receipt.charge()
    if row is None or sent.privacy is None:
        return
    for field in CHARGE_FIELDS:
        own = sent.privacy.get(field)
        if field in sent.privacy and not _same(row.get(field), own):
            raise Misstated(
                receipt.charge_seq,
                field,
                row.get(field),
                own,
                f"for this node's round {receipt.round} privacy charge; this node's "
                f"accountant charged {own}",
            )


def _check_value(receipt: Receipt) -> None:
    value, valuation = receipt.contribution(), receipt.valuation()
    if value is None or valuation is None:
        return
    where = f"the valuation entry {receipt.valuation_seq}"
    try:
        players = json.loads(valuation["players"])
        utilities = {int(mask): int(u) for mask, u in json.loads(valuation["utilities"])}
        permutations = json.loads(valuation["permutations"])
        values = recompute_values(
            str(valuation["method"]),
            [str(p) for p in players],
            utilities,
            permutations,
            int(valuation["truncation"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ReceiptError(
            f"receipt for round {receipt.round}: {where} cannot be recomputed: {err}"
        ) from None
    own = values.get(receipt.participant)
    if own != value:
        recomputed = "does not list this node" if own is None else f"gives {own}"
        raise Misstated(
            receipt.value_seq,
            "value",
            value,
            own,
            f"for this node's round {receipt.round} contribution; recomputed from {where}, "
            f"it {recomputed}",
        )

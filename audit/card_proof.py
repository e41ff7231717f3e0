"""What a model card check reads and returns: the card's proof, each check, the verdict.

:func:`read_proof` parses a card's ``ledger`` proof (card format v1, v2 or
v3); a :class:`CardVerdict` holds every :class:`Check` that
:func:`audit.cards.check_card` made, each held, a mismatch, or not made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from common.errors import UserError
from common.tree_head import TreeHead, TreeHeadError

__all__ = ["CardError", "CardProof", "CardVerdict", "Check", "read_proof"]


class CardError(UserError, ValueError):
    """A model card that cannot be read as a card (malformed JSON or proof)."""


@dataclass(frozen=True)
class Check:
    """One check of a card: held (``True``), a mismatch (``False``) or not made (``None``)."""

    name: str
    held: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        status = {True: "held", False: "mismatch", None: "not checked"}[self.held]
        return {"check": self.name, "status": status, "detail": self.detail}


@dataclass(frozen=True)
class CardVerdict:
    """Every check made on a card, in order."""

    checks: tuple[Check, ...]

    @property
    def mismatches(self) -> list[Check]:
        return [c for c in self.checks if c.held is False]

    @property
    def unchecked(self) -> list[Check]:
        return [c for c in self.checks if c.held is None]

    @property
    def status(self) -> Literal["refused", "incomplete", "verified"]:
        """``refused`` on any mismatch; ``incomplete`` if a check was not made."""
        if self.mismatches:
            return "refused"
        return "incomplete" if self.unchecked else "verified"

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": [c.to_dict() for c in self.checks]}


@dataclass(frozen=True)
class CardProof:
    """The card's ledger proof, parsed: the head, the final entry, and each round's entry."""

    head: TreeHead
    entry: dict[str, Any]
    path: list[str]
    rounds: list[dict[str, Any]]
    """Each proven round's entry with its ``inclusion_proof`` (empty in cards before v3)."""
    witness_keys: dict[str, str]
    """The verifier keys the card states for its cosigners: never trusted, only compared."""


def read_proof(card: dict[str, Any]) -> CardProof:
    """Parse the card's ``ledger`` proof (v1, v2 or v3); :class:`CardError` if malformed."""
    try:
        proof = card["ledger"]
        signed = proof["tree_head" if "tree_head" in proof else "checkpoint"]  # v2+ or v1
        head = TreeHead(
            tree_size=int(signed["tree_size"]),
            root=str(signed["root"]),
            at=str(signed["at"]),
            note=str(signed["note"]),
            key_id=str(signed["key_id"]),
            signature=str(signed["signature"]),
            checkpoint=signed.get("checkpoint"),
        )
        if head.body().decode("utf-8") != signed.get("signed_body"):
            raise CardError("the card's tree head fields differ from its signed body")
        return CardProof(
            head=head,
            entry=dict(proof["entry"]),
            path=[str(p) for p in proof["inclusion_proof"]],
            rounds=[dict(r) for r in proof.get("rounds") or []],
            witness_keys={str(k): str(v) for k, v in (signed.get("witnesses") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, TreeHeadError) as err:
        if isinstance(err, CardError):
            raise
        raise CardError(f"the model card's ledger proof is malformed: {err!r}") from None

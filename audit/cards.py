"""Checking a model card against the consortium, as any reader of a release can.

A card (``model-card.json``, :mod:`server.release.card`) carries the final
round's ledger entry, the signed head covering it (a C2SP checkpoint with
the participants' cosignatures) and, from card format v3, an inclusion proof
of every round it lists. :func:`check_card` runs every check it can and
names each mismatch; nothing it checks comes from the card alone:

- offline, with ``consortium.json``: the operator signed the head, under
  the consortium's log origin; the final round's entry and every listed round's
  entry are in that head's tree and record the rounds and models the card
  states;
- with the ledger (:mod:`audit.card_ledger`, read-only): the head is the
  ledger's; each cosignature verifies with the key the consortium admitted
  its witness with (never a key the card states), and the cosigners reach
  the quorum (a majority of the members admitted to the run); the release
  entry names this card and its model; obligations, contributors and ε are
  recomputed from the licences and charges the ledger records.

Without the ledger the witness, quorum and ledger checks are reported as
not made: a :class:`CardVerdict` is ``verified`` only when every check ran
and held.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session

from audit.card_ledger import ledger_checks
from audit.card_proof import CardError, CardProof, CardVerdict, Check, read_proof
from common.canonical import canonical_json
from common.merkle import ProofError, leaf_hash, verify_inclusion
from common.tree_head import TreeHead, TreeHeadError

__all__ = [
    "EXIT_INCOMPLETE",
    "EXIT_MISMATCH",
    "CardError",
    "CardProof",
    "CardVerdict",
    "Check",
    "check_card",
    "read_proof",
]

EXIT_MISMATCH = 1
"""``audit card``: a check failed (the card is refused; each mismatch is named)."""
EXIT_INCOMPLETE = 4
"""``audit card``: no check failed, but some could not be made (no ``--ledger``)."""

NEEDS_LEDGER = "not checked: needs --ledger"


def check_card(
    card: dict[str, Any],
    *,
    operator: Ed25519PublicKey,
    origin: str | None,
    session: Session | None = None,
    card_sha256: str | None = None,
) -> CardVerdict:
    """Check ``card`` against the consortium (and its ledger, if ``session`` reads one).

    Parameters
    ----------
    card : dict
        The parsed ``model-card.json``.
    operator : Ed25519PublicKey
        The operator's key (``consortium.json``).
    origin : str or None
        The consortium's log origin (:attr:`common.consortium.Consortium.origin`);
        ``None``: the origin is reported as not checked.
    session : Session, optional
        A read-only session on the consortium's ledger; without it, the
        checks that need the ledger are reported as not made.
    card_sha256 : str, optional
        The SHA-256 of the card file's bytes; by default that of the card's
        canonical JSON (the bytes a release writes).

    Raises
    ------
    CardError
        The card is not a card: its proof cannot even be read.
    """
    proof = read_proof(card)
    try:
        checks = [_signature(proof.head, operator), _origin(proof.head, origin)]
        checks += [_final_round(card, proof), _rounds_proven(card, proof)]
        if session is None:
            checks += [Check(name, None, NEEDS_LEDGER) for name in LEDGER_CHECKS]
        else:
            digest = card_sha256 or _sha256(canonical_json(card))
            checks += ledger_checks(session, card, proof, digest)
    except CardError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a field of the wrong shape
        raise CardError(f"the model card is malformed: {err!r}") from None
    return CardVerdict(tuple(checks))


LEDGER_CHECKS = (
    "checkpoint",
    "witnesses",
    "quorum",
    "release",
    "contributors",
    "obligations",
    "privacy",
)
"""The checks that need the ledger (:mod:`audit.card_ledger`), in the order they run."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _signature(head: TreeHead, operator: Ed25519PublicKey) -> Check:
    try:
        head.verify(operator)
    except TreeHeadError as err:
        return Check("operator signature", False, str(err))
    return Check(
        "operator signature", True, f"the operator signed the head of size {head.tree_size}"
    )


def _origin(head: TreeHead, origin: str | None) -> Check:
    if head.checkpoint is None:
        return Check(
            "log origin", False,
            "the card's head is a JSON head, not a checkpoint: it names no log and carries "
            "no cosignatures",
        )  # fmt: skip
    if origin is None:
        return Check("log origin", None, "not checked: needs consortium.json")
    if head.origin != origin:
        return Check(
            "log origin", False,
            f"the checkpoint is of log {head.origin!r}, not of the consortium's log "
            f"{origin!r}",
        )  # fmt: skip
    return Check("log origin", True, f"the checkpoint is of the consortium's log {head.origin!r}")


def _included(entry: dict[str, Any], path: list[str], head: TreeHead) -> dict[str, Any]:
    """The entry's stated row, once its leaf hash and inclusion in ``head``'s tree hold."""
    payload = str(entry["payload"])
    leaf = leaf_hash(payload.encode("ascii"))
    if leaf.hex() != entry.get("leaf_hash"):
        raise ProofError(f"entry {entry.get('seq')}'s leaf hash does not match its payload")
    verify_inclusion(
        leaf, int(entry["seq"]), head.tree_size, [bytes.fromhex(p) for p in path],
        bytes.fromhex(head.root),
    )  # fmt: skip
    stated: dict[str, Any] = json.loads(payload)
    return stated


def _final_round(card: dict[str, Any], proof: CardProof) -> Check:
    name = "final round"
    try:
        stated = _included(proof.entry, proof.path, proof.head)
        run_id, number, model = card["run"]["id"], card["model"]["round"], card["model"]["sha256"]
    except (ProofError, KeyError, TypeError, ValueError) as err:
        return Check(name, False, f"the final round's entry is not proven: {err}")
    row = stated.get("row") or {}
    seq = proof.entry["seq"]
    if (stated.get("table"), row.get("run_id"), row.get("number")) != ("rounds", run_id, number):
        return Check(name, False, f"entry {seq} is not round {number} of run {run_id}")
    if row.get("model_sha256_after") != model:
        return Check(
            name, False,
            f"entry {seq} records model {row.get('model_sha256_after')}, the card releases {model}",
        )  # fmt: skip
    return Check(name, True, f"entry {seq} records round {number} of run {run_id}, model {model}")


def _rounds_proven(card: dict[str, Any], proof: CardProof) -> Check:
    """Every round the card lists has its entry proven under the head, stating what it lists."""
    name = "rounds proven"
    listed = {int(r["round"]): r for r in card.get("rounds") or []}
    proven: dict[int, str] = {}
    problems = []
    for entry in proof.rounds:
        try:
            row = _included(entry, list(entry["inclusion_proof"]), proof.head).get("row") or {}
        except (ProofError, KeyError, TypeError, ValueError) as err:
            problems.append(f"entry {entry.get('seq')}: {err}")
            continue
        if row.get("run_id") == card["run"]["id"] and isinstance(row.get("number"), int):
            proven[row["number"]] = str(row.get("model_sha256_after"))
    for number, r in sorted(listed.items()):
        if number not in proven:
            problems.append(f"round {number} is listed but no entry proves it")
        elif proven[number] != r.get("model_sha256_after"):
            problems.append(
                f"round {number} lists model {r.get('model_sha256_after')}, its entry "
                f"records {proven[number]}"
            )
    if problems:
        return Check(name, False, "; ".join(problems))
    return Check(name, True, f"all {len(listed)} listed rounds are proven")

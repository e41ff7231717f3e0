"""Checking a model card's ledger proof, as any reader of a release can, offline.

A card (``model-card.json``, :mod:`server.release.card`) carries the final round's
ledger entry, the signed tree head covering it and the inclusion proof; from
ledger v12 the head is a C2SP checkpoint carrying the cosignatures of the
participants that checked it, with each witness's verifier key.
:func:`verify_card` checks that the operator signed the head, that the entry
is in that head's tree, that the entry records the released model, and every
cosignature against its witness's key (a reader that trusts those keys only
as far as the ledger's admissions can compare them with ``audit show``).
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import UserError
from common.merkle import leaf_hash, verify_inclusion
from common.note import COSIGNATURE_TYPE, NoteError, parse_verifier_key, verify_cosignature
from common.receipts import TreeHead, TreeHeadError

__all__ = ["CardError", "verify_card"]


class CardError(UserError, ValueError):
    """A model card whose ledger proof does not hold."""


def verify_card(card: dict[str, Any], operator: Ed25519PublicKey) -> list[str]:
    """Check a card's proof against the operator's key; return the witnesses that cosigned.

    Parameters
    ----------
    card : dict
        The parsed ``model-card.json``.
    operator : Ed25519PublicKey
        The operator's key (``consortium.json``'s ``operator_public_key``).

    Raises
    ------
    TreeHeadError
        The tree head was not signed by ``operator``.
    ProofError
        The final round's entry is not in the signed head's tree.
    CardError
        The card is malformed, the entry does not record the released model, or
        a cosignature does not verify with its witness's key.
    """
    try:
        proof = card["ledger"]
        signed = proof["tree_head" if "tree_head" in proof else "checkpoint"]  # v2 or v1
        head = TreeHead(
            tree_size=int(signed["tree_size"]),
            root=str(signed["root"]),
            at=str(signed["at"]),
            note=str(signed["note"]),
            key_id=str(signed["key_id"]),
            signature=str(signed["signature"]),
            checkpoint=signed.get("checkpoint"),
        )
        witness_keys = dict(signed.get("witnesses") or {})
        entry = proof["entry"]
        payload = str(entry["payload"])
        stated = json.loads(payload)
        path = [bytes.fromhex(p) for p in proof["inclusion_proof"]]
    except (KeyError, TypeError, ValueError) as err:
        raise CardError(f"the model card's ledger proof is malformed: {err!r}") from None
    if head.body().decode("ascii") != signed.get("signed_body"):
        raise TreeHeadError("the card's tree head fields differ from its signed body")
    head.verify(operator)
    leaf = leaf_hash(payload.encode("ascii")).hex()
    if leaf != entry.get("leaf_hash"):
        raise CardError(f"entry {entry.get('seq')}'s leaf hash does not match its payload")
    verify_inclusion(
        bytes.fromhex(leaf), int(entry["seq"]), head.tree_size, path,
        bytes.fromhex(head.root),
    )  # fmt: skip
    row = stated.get("row") or {}
    recorded = (stated.get("table"), row.get("run_id"), row.get("number"))
    if recorded != ("rounds", card["run"]["id"], card["model"]["round"]):
        raise CardError(f"entry {entry['seq']} is not run {card['run']['id']}'s final round")
    if row.get("model_sha256_after") != card["model"]["sha256"]:
        raise CardError(
            f"entry {entry['seq']} records model {row.get('model_sha256_after')}, "
            f"the card releases {card['model']['sha256']}"
        )
    return _witnesses(head, witness_keys)


def _witnesses(head: TreeHead, keys: dict[str, Any]) -> list[str]:
    """Check every cosignature on the card's checkpoint against the card's witness keys."""
    found = []
    text = head.body().decode("utf-8")
    for line in head.witnesses():
        try:
            if line.name not in keys:
                raise NoteError(f"the card holds no cosignature key for {line.name}")
            name, kind, public = parse_verifier_key(str(keys[line.name]))
            if name != line.name or kind != COSIGNATURE_TYPE:
                raise NoteError(f"the card holds no cosignature key for {line.name}")
            verify_cosignature(text, line, public)
        except NoteError as err:
            raise CardError(f"the release checkpoint's cosignature by {line.name}: {err}") from None
        found.append(line.name)
    return found

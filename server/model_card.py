"""The model card of a release: its Markdown form and the check a reader makes.

The card itself (``model-card.json``) is built by :mod:`server.release` from
the ledger. :func:`card_markdown` renders it for people, obligations first;
:func:`verify_card` checks its ledger proof: the operator signed the
checkpoint, the final round's entry is in that checkpoint's tree, and the
entry records the released model.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.merkle import verify_inclusion
from server.ledger.checkpoints import Checkpoint, CheckpointError
from server.ledger.entries import entry_leaf_hash

__all__ = ["CARD_FORMAT", "CardError", "card_markdown", "verify_card"]

CARD_FORMAT = "fedcommons-model-card/v1"


class CardError(ValueError):
    """A model card whose ledger proof does not hold."""


def verify_card(card: dict[str, Any], operator: Ed25519PublicKey) -> None:
    """Check a card's proof against the operator's checkpoint key.

    Parameters
    ----------
    card : dict
        The parsed ``model-card.json``.
    operator : Ed25519PublicKey
        The operator's key (``consortium.json``'s ``operator_public_key``).

    Raises
    ------
    CheckpointError
        The checkpoint was not signed by ``operator``.
    ProofError
        The final round's entry is not in the checkpoint's tree.
    CardError
        The card is malformed, or the entry does not record the released model.
    """
    try:
        proof = card["ledger"]
        signed = proof["checkpoint"]
        checkpoint = Checkpoint(
            tree_size=int(signed["tree_size"]),
            root=str(signed["root"]),
            at=str(signed["at"]),
            note=str(signed["note"]),
            key_id=str(signed["key_id"]),
            signature=str(signed["signature"]),
        )
        entry = proof["entry"]
        payload = str(entry["payload"])
        stated = json.loads(payload)
        path = [bytes.fromhex(p) for p in proof["inclusion_proof"]]
    except (KeyError, TypeError, ValueError) as err:
        raise CardError(f"the model card's ledger proof is malformed: {err!r}") from None
    if checkpoint.body().decode("ascii") != signed.get("signed_body"):
        raise CheckpointError("the card's checkpoint fields differ from its signed body")
    checkpoint.verify(operator)
    leaf = entry_leaf_hash(payload)
    if leaf != entry.get("leaf_hash"):
        raise CardError(f"entry {entry.get('seq')}'s leaf hash does not match its payload")
    verify_inclusion(
        bytes.fromhex(leaf), int(entry["seq"]), checkpoint.tree_size, path,
        bytes.fromhex(checkpoint.root),
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


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return [*lines, ""]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _eps(value: float | str) -> str:
    return "∞ (DP off)" if value == "inf" else f"{float(value):.3f}"


def card_markdown(card: dict[str, Any]) -> str:
    """``model-card.md``: the card for people, obligations first."""
    run, model, owed = card["run"], card["model"], card["obligations"]
    lines = [
        f"# Model card: run {run['id']} ({run['model']} on {run['dataset']})",
        "",
        f"Released {card['released_at']} from the FedCommons ledger. `{model['file']}` holds "
        f"the global model after round {model['round']} of {run['planned_rounds']} "
        f"(a `{run['purpose']}` run).",
        "",
        *_table(
            ["", ""],
            [
                ["model sha256 (ledger)", f"`{model['sha256']}`"],
                ["model file sha256", f"`{model['file_sha256']}`"],
                ["frozen base model sha256", f"`{model['base_sha256']}`"],
                ["initial model sha256", f"`{model['initial_sha256']}`"],
                ["policy sha256", f"`{run['policy_sha256']}`"],
                ["rounds", f"{run['rounds']} of {run['planned_rounds']} planned"],
                ["test accuracy", _pct(run["test_accuracy"])],
                ["Flower run id", str(run["flower_run_id"])],
            ],
        ),
        "## Obligations",
        "",
    ]
    if owed["non_commercial"]:
        lines.append(
            "- **Non-commercial use only**, required by "
            + ", ".join(owed["non_commercial_from"])
            + "."
        )
    else:
        lines.append("- Commercial use: allowed by every contributing licence.")
    if owed["share_alike"]:
        lines.append(
            "- **Share-alike**: derived works carry the terms of "
            + ", ".join(owed["share_alike"])
            + " (from "
            + ", ".join(owed["share_alike_from"])
            + ")."
        )
    else:
        lines.append("- Share-alike: none.")
    lines.append(f"- Permitted purposes: {', '.join(owed['purposes']) or 'none'}.")
    if owed["expires"]:
        lines.append(f"- Use ends on {owed['expires']} (the earliest licence expiry).")
    if owed["attribution"]:
        lines.append("- **Attribution**: credit, in every derived work,")
        lines += [f"  - {credit}" for credit in owed["attribution"]]
    else:
        lines.append("- Attribution: none required.")
    lines += ["", "## Provenance", ""]
    lines += _table(
        ["institution", "kind", "rounds", "dataset sha256", "records", "licence"],
        [
            [c["institution"], c["kind"], ", ".join(map(str, c["rounds"])),
             f"`{d['sha256']}`", str(d["records"]), d["licence"]]
            for c in card["contributors"]
            for d in c["datasets"]
        ],
    )  # fmt: skip
    lines += ["## Privacy (ε cumulative over every run on the dataset)", ""]
    lines += _table(
        ["institution", "dataset", "DP", "ε", "δ", "accountant", "rounds charged"],
        [
            [p["institution"], f"`{p['dataset_sha256'][:12]}…`", "yes" if p["dp"] else "no",
             _eps(p["epsilon"]), f"{p['delta']:g}", p["accountant"], str(p["rounds_charged"])]
            for p in card["privacy"]
        ],
    )  # fmt: skip
    lines += ["## Rounds", ""]
    lines += _table(
        ["round", "contributors", "validation accuracy", "global model sha256"],
        [
            [str(r["round"]), ", ".join(r["participants"]), _pct(r["accuracy"]),
             f"`{r['model_sha256_after'][:16]}…`"]
            for r in card["rounds"]
        ],
    )  # fmt: skip
    if card["exclusions"]:
        lines += ["## Left out (these contributed nothing to the rounds named)", ""]
        lines += _table(
            ["round", "institution", "code", "reason"],
            [
                [str(e["round"]), e["institution"] or f"node {e['node_id']}", str(e["code"]),
                 e["reason"].replace("|", "\\|")]
                for e in card["exclusions"]
            ],
        )  # fmt: skip
    proof = card["ledger"]
    signed = proof["checkpoint"]
    lines += [
        "## Ledger proof",
        "",
        f"Round {model['round']} is ledger entry {proof['entry']['seq']} (leaf hash "
        f"`{proof['entry']['leaf_hash']}`). The operator's checkpoint of {signed['at']} "
        f"(key `{signed['key_id'][:16]}…`) signs the tree of the first {signed['tree_size']} "
        f"entries, root `{signed['root']}`; `model-card.json` carries the entry, the "
        f"signature and an RFC 6962 inclusion proof of {len(proof['inclusion_proof'])} hashes. "
        "This release is itself a ledger entry naming the SHA-256 of `model-card.json`; "
        "`fedcommons audit verify` checks the whole ledger.",
        "",
    ]
    return "\n".join(lines)

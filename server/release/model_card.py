"""The model card of a release, for people: its Markdown form, obligations first.

The card itself (``model-card.json``) is built by :mod:`server.release.card` from the
ledger; a reader checks its ledger proof with :func:`audit.cards.verify_card`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CARD_FORMAT", "CARD_JSON", "CARD_MARKDOWN", "MODEL_FILE", "card_markdown"]

CARD_FORMAT = "fedcommons-model-card/v3"
"""v3 proves every round it lists (``ledger.rounds``); v2 named the signed head
``tree_head`` in the card's ``ledger`` proof (v1: ``checkpoint``)."""
MODEL_FILE = "model.safetensors"
CARD_JSON = "model-card.json"
CARD_MARKDOWN = "model-card.md"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return [*lines, ""]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _charged(privacy: dict[str, Any]) -> str:
    unused = privacy.get("rounds_charged_unused") or []
    text = str(privacy["rounds_charged"])
    if unused:
        text += f" (round{'s' if len(unused) > 1 else ''} {', '.join(map(str, unused))} unused)"
    return text


def _eps(value: float | str) -> str:
    return "∞ (DP off)" if value == "inf" else f"{float(value):.3f}"


def card_markdown(card: dict[str, Any]) -> str:
    """``model-card.md``: the card for people, obligations first."""
    run, model, owed = card["run"], card["model"], card["obligations"]
    # a v2 card before resumes existed names one Flower run only
    carried = run.get("flower_runs") or [{"flower_run_id": run["flower_run_id"], "first_round": 1}]
    carried_by = ", ".join(
        f"{c['flower_run_id']}" if len(carried) == 1 else
        f"{c['flower_run_id']} (from round {c['first_round']})"
        for c in carried
    )  # fmt: skip
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
                ["Flower run id" if len(carried) == 1 else "Flower runs (resumed)", carried_by],
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
             _eps(p["epsilon"]), f"{p['delta']:g}", p["accountant"], _charged(p)]
            for p in card["privacy"]
        ],
    )  # fmt: skip
    if any(p.get("rounds_charged_unused") for p in card["privacy"]):
        lines += [
            "ε includes rounds a member trained and paid for whose update the model does not "
            "use (a round that failed on the server, or one trained again after a crash): "
            "the member spent it all the same.",
            "",
        ]
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
    shares = card.get("contributions") or {}  # cards before v10 of the ledger have none
    if shares.get("rounds_valued"):
        lines += [
            f"## Contributions ({', '.join(shares['methods'])} values over "
            f"{shares['rounds_valued']} rounds, share of the total)",
            "",
        ]
        lines += _table(
            ["institution", "kind", "value (ppm of utility)", "share"],
            [[i["name"], i["kind"], str(i["value_ppm"]), _pct(i["share"])]
             for i in shares["institutions"]]
            + [[f"all {k['name']}", k["name"], str(k["value_ppm"]), _pct(k["share"])]
               for k in shares["kinds"]],
        )  # fmt: skip
    proof = card["ledger"]
    signed = proof["tree_head"]
    lines += [
        "## Ledger proof",
        "",
        f"Round {model['round']} is ledger entry {proof['entry']['seq']} (leaf hash "
        f"`{proof['entry']['leaf_hash']}`). The operator's signed tree head of {signed['at']} "
        f"(key `{signed['key_id'][:16]}…`) signs the tree of the first {signed['tree_size']} "
        f"entries, root `{signed['root']}`; `model-card.json` carries the entry, the "
        f"signature and an RFC 6962 inclusion proof of {len(proof['inclusion_proof'])} hashes. "
        "This release is itself a ledger entry naming the SHA-256 of `model-card.json`, "
        f"which also proves each of the {len(card['rounds'])} rounds listed above; "
        "`fedcommons audit card` checks the card against the consortium and its ledger, "
        "`fedcommons audit verify` the whole ledger.",
        "",
    ]
    if signed.get("checkpoint"):
        witnesses = signed.get("witnesses") or {}
        lines += [
            "The head is a C2SP checkpoint (any transparency tool opens it with the operator's "
            "verifier key in `consortium.json`)"
            + (
                f", cosigned by {', '.join(sorted(witnesses))}: each checked that the ledger "
                "extends every head it had seen before, and that it holds its own update."
                if witnesses
                else "; no participant cosigned it."
            ),
            "",
            "```",
            signed["checkpoint"].rstrip("\n"),
            "```",
            "",
        ]
    return "\n".join(lines)

"""After a demo or simulated run: release the model, check the ledger, write summary.json.

What follows a run is the same whichever engine carried it: the operator
releases the final model with its card, an auditor verifies the whole ledger
against every receipt the participants got, and the run is summed up in
``summary.json`` beside the work folder's data.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, select

from client.quorum import established_size, pending
from client.receipts import ReceiptBook
from common.arrays import arrays_to_bytes
from common.epsilon import epsilon_for_json
from common.keys import load_ed25519_key, passphrase_from_env
from common.model import build_model, full_arrays, get_arrays
from common.policy import Policy
from common.receipts import read_receipts
from fedcommons.demo_setup import DemoConsortium, collect_receipts
from fedcommons.local_federation import NodeSpec
from ledger import Ledger, contributions_report
from ledger.runs import flower_runs
from ledger.schema import Round, RoundUpdate
from ledger.store import masked_url
from ledger.verify import verify_ledger
from server.operator.follow import RunOutcome
from server.release.release import release_model

__all__ = ["summarise"]


def _quorum_seen(nodes: list[NodeSpec]) -> dict[str, dict[str, int]]:
    """Per node, what its own folder says of the witness quorum (:mod:`client.quorum`)."""
    seen = {}
    for node in nodes:
        if node.state_dir is not None:
            book = ReceiptBook(node.state_dir / "receipts")
            seen[node.institution] = {
                "established_size": established_size(book.folder),
                "pending": len(pending(book.receipts(), established_size(book.folder))),
                "refused": len(book.refusals()),
            }
    return seen


def summarise(
    demo: DemoConsortium,
    policy: Policy,
    ledger: Ledger,
    outcome: RunOutcome,
    engine: dict[str, Any],
    *,
    started: float,
) -> dict[str, Any]:
    """Release, verify and return (and write) ``summary.json``; ``engine`` leads it.

    ``started`` is the ``time.monotonic()`` the whole command started at.
    """
    workdir, operator, layout = demo.workdir, demo.operator, demo.layout
    run_id, rounds = outcome.ledger_run_id, outcome.rounds
    with ledger.session() as session:
        update_bytes, crypto_seconds = session.execute(
            select(
                func.avg(RoundUpdate.update_bytes),
                func.sum(RoundUpdate.seal_seconds + RoundUpdate.open_seconds),
            )
            .join(Round, Round.id == RoundUpdate.round_id)
            .where(Round.run_id == run_id)
        ).one()
    # The operator releases the final model with its card (a ledger entry, signed).
    deploy = operator.deploy()
    release = release_model(
        ledger,
        run_id,
        workdir / "releases" / f"run-{run_id}",
        snapshot_dir=deploy.snapshot_dir,
        signer=load_ed25519_key(operator.signing_key, passphrase=passphrase_from_env()),
    )
    # As an auditor would: the receipts each participant got, against the ledger.
    receipts_dir = collect_receipts(workdir / "receipts", demo.nodes)
    held = [(str(path), receipt) for path, receipt in read_receipts(receipts_dir)]
    verified = verify_ledger(ledger, operator.consortium().operator_key, held)

    model = build_model(policy.model, policy.federation.seed)
    model_bytes = len(arrays_to_bytes(full_arrays(model)))  # the whole model
    trainable_bytes = len(arrays_to_bytes(get_arrays(model)))  # what travels
    with ledger.session() as session:
        carriers = [f for f, _ in flower_runs(session, run_id)]
        (valued,) = contributions_report(session, run_id=run_id)
    final = rounds[-1].epsilon if rounds else {}
    summary: dict[str, Any] = {
        **engine,
        "flower_run_ids": carriers,  # more than one when the run was resumed
        "ledger_run_id": run_id,
        "model": policy.model.name,
        "dataset": policy.data.dataset,
        "num_classes": policy.model.num_classes,
        "partition": policy.data.partition,
        "policy_sha256": policy.sha256(),
        "institutions": [
            {
                "name": name,
                "kind": kind,
                "examples": layout.examples[name],
                "epsilon": epsilon_for_json(final[name]) if name in final else None,
            }
            for name, kind in layout.kinds.items()
        ],
        "dp": policy.privacy.dp,
        "epsilon_budget": policy.privacy.epsilon if policy.privacy.dp else "inf",
        "delta": policy.privacy.delta if policy.privacy.dp else 0.0,
        "accountant": policy.privacy.accountant if policy.privacy.dp else "none",
        "rounds": [
            {
                "round": r.round,
                "accuracy": r.accuracy,
                "loss": r.loss,
                "participants": r.participants,
                "seconds": r.seconds,
                "epsilon": {name: epsilon_for_json(eps) for name, eps in r.epsilon.items()},
            }
            for r in rounds
        ],
        # each institution's cumulative share of the run's contribution value
        "contributions": {i["name"]: i["share"] for i in valued["institutions"]},
        "valuation": {
            "method": policy.valuation.method,
            "rounds_valued": len(valued["rounds"]),
            "evaluations": sum(r["evaluations"] for r in valued["rounds"]),
            "seconds": sum(r["seconds"] for r in valued["rounds"]),
        },
        "final_accuracy": outcome.test_accuracy,
        "final_validation_accuracy": rounds[-1].accuracy if rounds else None,
        "ledger_url": masked_url(deploy.ledger_url),  # a password never leaves the operator
        "encrypted_updates": True,
        # audit verify with the operator's key and every participant's receipts:
        # entries, chain, rows, signed tree heads, receipts
        "ledger_verified": True,
        "ledger_entries": verified.entries,
        "ledger_tree_heads": verified.tree_heads,
        "ledger_root": verified.tree_root,
        "release_dir": str(release.out_dir),
        "receipts_dir": str(receipts_dir),
        "receipts": verified.receipts,
        # the participants' cosignatures on the signed heads (C2SP checkpoints)
        "cosignatures": verified.cosignatures,
        "witnesses": {str(size): names for size, names in verified.witnesses},
        # each node's own view: the largest checkpoint it saw its run's members
        # establish (their witness quorum) and the receipts still waiting for one
        "quorum": _quorum_seen(demo.nodes),
        # Every update's sealing (client) plus opening (server), summed as if
        # nothing ran in parallel, over the rounds' wall time: an upper bound.
        "crypto_seconds": float(crypto_seconds or 0.0),
        "crypto_share": float(crypto_seconds or 0.0) / max(sum(r.seconds for r in rounds), 1e-9),
        "model_bytes": model_bytes,
        "update_bytes": float(update_bytes or 0.0),
        "trainable_bytes": trainable_bytes,
        "wall_seconds": time.monotonic() - started,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary

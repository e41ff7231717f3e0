"""The embedded demo: three institutions, real Flower processes, one ledger.

The data are scikit-learn's real hand-written digits (or standard-library
docstrings for BERT). Each institution's partition is written to its own
folder, which only its SuperNode reads; the server keeps a validation split
(scored every round) and a test split (scored once at the end). The run is
submitted and followed exactly as ``fedcommons operator run`` does, then
released and verified as an operator and an auditor would.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from common.arrays import arrays_to_bytes
from common.epsilon import epsilon_for_json
from common.keys import load_ed25519_key, passphrase_from_env
from common.model import build_model, full_arrays, get_arrays
from common.policy import Policy
from common.receipts import read_receipts
from fedcommons.demo_setup import (
    DEMO_INSTITUTIONS,
    collect_receipts,
    demo_consortium,
    started_federation,
)
from fedcommons.local_federation import LocalFederation
from server.flower import FederationError
from server.ledger import Ledger, contributions_report
from server.ledger.runs import RESUMABLE, flower_runs
from server.ledger.schema import Round, RoundUpdate, Run
from server.ledger.store import masked_url
from server.ledger.verify import verify_ledger
from server.operate import prepare_resume
from server.release import release_model
from server.resume import ResumeError
from server.runs import (
    RoundProgress,
    RunFailed,
    RunOutcome,
    follow_run,
    mark_interrupted,
    read_rounds,
    submit_run,
)

__all__ = ["run_demo", "unfinished_run"]

log = logging.getLogger(__name__)


def run_demo(
    workdir: Path,
    policy: Policy,
    *,
    ledger_url: str | None = None,
    on_round: Callable[[RoundProgress], None] | None = None,
    status_interval: float = 2.0,
    insecure: bool = False,
    resume: bool = False,
    isolation: str = "warm",
    encoder_cache: bool = True,
) -> dict[str, Any]:
    """Run the whole demo and return (and write) ``summary.json``.

    The operator's consortium (keys, CA, SuperLink certificate) is created in
    ``workdir/operator`` and each institution enrols from its own state
    folder; the operator admits every request, which registers its SuperNode
    with the SuperLink. Both are reused when the demo runs again in the same
    folder. ``insecure`` turns TLS and SuperNode authentication off (updates
    stay encrypted and signed).

    A SuperNode that dies is left out of its round (the run goes on while the
    quorum holds). If the SuperLink dies, or the demo is interrupted, the run
    is recorded ``interrupted``; ``resume`` then continues the folder's last
    unfinished run with its own policy (``policy`` is not used) from its last
    recorded round, and the summary covers the whole run.

    Raises
    ------
    FederationError
        If a Flower process dies or the run does not finish successfully
        (:class:`~server.runs.PrivacyBudgetExhausted` when budgets ran out).
    """
    started = time.monotonic()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ledger_url = ledger_url or f"sqlite:///{workdir / 'ledger.db'}"
    resuming = unfinished_run(workdir, ledger_url) if resume else None
    if resuming is not None:
        policy = resuming[1]
    demo = demo_consortium(workdir, policy, ledger_url)
    operator, layout = demo.operator, demo.layout
    ledger = Ledger(ledger_url)
    try:
        with started_federation(
            demo, policy, insecure=insecure, isolation=isolation, encoder_cache=encoder_cache
        ) as federation:
            if resuming is not None:
                snapshots = operator.deploy().snapshot_dir
                prepare_resume(ledger, snapshots, resuming[0], federation.cli)
            flower_run_id = submit_run(federation.cli, policy, workdir / "run")
            outcome = _follow(ledger, federation, flower_run_id, on_round, status_interval)
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
    finally:
        ledger.close()

    model = build_model(policy.model, policy.federation.seed)
    model_bytes = len(arrays_to_bytes(full_arrays(model)))  # the whole model
    trainable_bytes = len(arrays_to_bytes(get_arrays(model)))  # what travels
    with ledger.session() as session:
        carriers = [f for f, _ in flower_runs(session, run_id)]
        (valued,) = contributions_report(session, run_id=run_id)
    summary: dict[str, Any] = {
        "engine": "flower-deployment",
        "isolation": isolation,
        "encoder_cache": encoder_cache,
        "flower_run_id": flower_run_id,
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
                "epsilon": epsilon_for_json(rounds[-1].epsilon[name])
                if rounds and name in rounds[-1].epsilon
                else None,
            }
            for name, kind in DEMO_INSTITUTIONS
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
        "ledger_url": masked_url(ledger_url),  # a password never leaves the operator
        "tls": not insecure,
        "node_auth": not insecure,
        "superlink_db": str(federation.superlink_db),
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


def _follow(
    ledger: Ledger,
    federation: LocalFederation,
    flower_run_id: int,
    on_round: Callable[[RoundProgress], None] | None,
    status_interval: float,
) -> RunOutcome:
    """Follow the run; a SuperNode may die (the quorum decides), the SuperLink may not."""
    lost: set[str] = set()

    def check() -> None:
        federation.check_alive()
        for name in set(federation.dead_nodes()) - lost:
            lost.add(name)
            log.warning("the SuperNode of %s exited; the run goes on while the quorum holds", name)

    try:
        return follow_run(
            federation.cli,
            ledger,
            flower_run_id,
            on_round=on_round,
            check=check,
            status_interval=status_interval,
        )
    except (FederationError, KeyboardInterrupt) as err:
        if isinstance(err, RunFailed):
            raise
        run, rounds = read_rounds(ledger, flower_run_id)
        if run is None:
            raise
        why = "interrupted (Ctrl-C or SIGTERM)" if isinstance(err, KeyboardInterrupt) else str(err)
        mark_interrupted(ledger, run.id, why)
        if isinstance(err, KeyboardInterrupt):
            raise
        raise FederationError(
            f"{err}. Run {run.id} stopped after round {len(rounds)} and is recorded as "
            "interrupted; 'fedcommons demo --resume' in the same folder continues it"
        ) from None


def unfinished_run(workdir: Path, ledger_url: str) -> tuple[int, Policy]:
    """The folder's last run that did not finish, and its own policy; refuse if none."""
    if not (workdir / "operator" / "consortium.json").is_file():
        raise ResumeError(f"{workdir} holds no demo to resume (no operator folder)")
    ledger = Ledger(ledger_url)
    try:
        with ledger.session() as session:
            run = session.scalar(
                select(Run).where(Run.status.in_(RESUMABLE)).order_by(Run.id.desc()).limit(1)
            )
            if run is None:
                raise ResumeError(f"{workdir} holds no unfinished run to resume")
            return run.id, Policy.from_recorded(run.policy_toml)
    finally:
        ledger.close()

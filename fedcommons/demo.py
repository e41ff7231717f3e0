"""The embedded demo: three institutions, real Flower processes, one ledger.

The data are scikit-learn's real hand-written digits (or standard-library
docstrings for BERT). Each institution's partition is written to its own
folder, which only its SuperNode reads; the server keeps a validation split
(scored every round) and a test split (scored once at the end). The run is
submitted and followed exactly as ``fedcommons operator run`` does (by
:func:`~server.operator.operate.follow_with_progress`, with the demo's own
check that its processes live), then released and verified as an operator and
an auditor would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from common.policy import Policy
from fedcommons.demo_setup import (
    created_folder,
    demo_consortium,
    started_federation,
)
from fedcommons.local_federation import LocalFederation
from fedcommons.startup import STARTUP_TIMEOUT
from fedcommons.summary import summarise
from ledger import Ledger
from ledger.runs import RESUMABLE
from ledger.schema import Run
from server.app.resume import ResumeError
from server.operator.follow import RoundProgress, submit_run
from server.operator.operate import follow_with_progress, prepare_resume

__all__ = ["RESUME", "node_exited", "run_demo", "unfinished_run"]

log = logging.getLogger(__name__)

RESUME = "'fedcommons demo --resume' in the same folder continues it"
"""How a demo run that stopped short goes on."""


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
    startup_timeout: float = STARTUP_TIMEOUT,
    keep_log: bool = False,
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
    recorded round, and the summary covers the whole run. ``startup_timeout``
    is the most seconds each Flower process may take to start listening.
    ``keep_log`` keeps the ServerApp's log in ``logs/run-N.log`` also when the
    run finishes (one ``flwr log`` call; ``bench/quorum.py`` reads it).

    Raises
    ------
    FederationError
        If a Flower process dies or the run does not finish successfully
        (:class:`~server.operator.follow.PrivacyBudgetExhausted` when budgets ran out).
        A run that stops short keeps the ServerApp's full log in ``logs/run-N.log``
        (the SuperLink that holds it stops with the demo).
    """
    started = time.monotonic()
    workdir = workdir.resolve()
    ledger_url = ledger_url or f"sqlite:///{workdir / 'ledger.db'}"
    resuming = unfinished_run(workdir, ledger_url) if resume else None  # creates nothing
    if resuming is not None:
        policy = resuming[1]
    with created_folder(workdir):  # a refused policy leaves no folder
        demo = demo_consortium(workdir, policy, ledger_url)
    operator = demo.operator
    ledger = Ledger(ledger_url)
    try:
        with started_federation(
            demo,
            policy,
            insecure=insecure,
            isolation=isolation,
            encoder_cache=encoder_cache,
            startup_timeout=startup_timeout,
        ) as federation:
            if resuming is not None:
                snapshots = operator.deploy().snapshot_dir
                prepare_resume(ledger, snapshots, resuming[0], federation.cli)
            flower_run_id = submit_run(federation.cli, policy, workdir / "run")
            outcome = follow_with_progress(
                federation.cli,
                ledger,
                flower_run_id,
                on_round=on_round,
                check=_nodes_watch(federation, quorum=policy.federation.min_nodes),
                keep_log=federation.keep_run_log,
                resume=RESUME,
                interrupted="interrupted (Ctrl-C or SIGTERM)",
                status_interval=status_interval,
            )
            if keep_log:
                federation.keep_run_log(flower_run_id)
        summary = summarise(
            demo,
            policy,
            ledger,
            outcome,
            {
                "engine": "flower-deployment",
                "isolation": isolation,
                "encoder_cache": encoder_cache,
                "flower_run_id": flower_run_id,
                "tls": not insecure,
                "node_auth": not insecure,
                "superlink_db": str(federation.superlink_db),
            },
            started=started,
        )
    finally:
        ledger.close()
    return summary


def _nodes_watch(federation: LocalFederation, *, quorum: int) -> Callable[[], None]:
    """The demo's check on every poll: the SuperLink must live, a SuperNode may exit (the
    quorum decides whether the run goes on); each exit is said once, as it happens."""
    lost: set[str] = set()

    def check() -> None:
        federation.check_alive()
        dead = federation.dead_nodes()
        lost.intersection_update(dead)  # a node back and gone again is said again
        alive = len(federation.nodes) - len(dead)
        for name in sorted(set(dead) - lost):
            lost.add(name)
            log.warning("%s", node_exited(name, alive, len(federation.nodes), quorum))

    return check


def node_exited(name: str, alive: int, total: int, quorum: int) -> str:
    """What the demo says when ``name``'s SuperNode exits: whether the run can still go on.

    Parameters
    ----------
    alive, total : int
        SuperNodes still running, and started.
    quorum : int
        The policy's ``federation.min-nodes``.
    """
    counts = f"{alive} of {total} nodes alive, quorum {quorum}"
    if alive >= quorum:
        return f"the SuperNode of {name} exited; the run goes on while the quorum holds ({counts})"
    return (
        f"the SuperNode of {name} exited and the quorum is lost ({counts}): the run stops "
        "unless enough nodes come back"
    )


def unfinished_run(workdir: Path, ledger_url: str) -> tuple[int, Policy]:
    """The folder's last run that did not finish, and its own policy; refuse if none."""
    if not (workdir / "operator" / "consortium.json").is_file():
        raise ResumeError(f"{workdir} holds no demo to resume (no operator folder)")
    ledger = Ledger(ledger_url, create=False)
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

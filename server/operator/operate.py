"""What ``fedcommons operator run`` and ``operator resume`` do, apart from printing.

Both submit the FedCommons app with a policy and follow the run to its end
(:mod:`server.operator.runs`), with a progress bar; a resume first checks that the run
can go on (:mod:`server.app.resume`) and marks it ``resuming``, so the ServerApp
takes it over. Ctrl-C or SIGTERM stops the Flower run (``flwr stop``) and
records the run as ``interrupted``, ready to resume.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from common.policy import Policy
from ledger import Ledger
from ledger.runs import flower_runs, request_resume
from server.app.resume import ResumeError, ResumePoint, check_resumable
from server.deploy import OperatorFiles
from server.operator.flower import FederationError, FlwrCli
from server.operator.progress import round_bar
from server.operator.runs import (
    LedgerLost,
    RunFailed,
    RunOutcome,
    follow_run,
    mark_interrupted,
    read_rounds,
    submit_run,
)

__all__ = ["follow_with_progress", "prepare_resume", "resume_run", "run_policy", "summary_of"]


def run_policy(files: OperatorFiles, policy: Policy, cli: FlwrCli, console: Console) -> RunOutcome:
    """Submit ``policy`` as a new run and follow it."""
    ledger = Ledger(files.deploy().ledger_url, create=False)  # 'operator init' made it
    try:
        flower_run_id = submit_run(cli, policy)
        console.print(f"submitted Flower run {flower_run_id} ({policy.federation.rounds} rounds)")
        return follow_with_progress(cli, ledger, flower_run_id, policy, console)
    finally:
        ledger.close()


def resume_run(
    files: OperatorFiles,
    run_id: int,
    cli: FlwrCli,
    console: Console,
    *,
    policy: Policy | None = None,
) -> tuple[Policy, RunOutcome]:
    """Check that run ``run_id`` can go on, mark it ``resuming``, submit it and follow it.

    Raises
    ------
    ResumeError
        The run finished, still runs, has another policy, or its last
        snapshot is missing or differs from the ledger; nothing is written.
    """
    deploy = files.deploy()
    ledger = Ledger(deploy.ledger_url, create=False)
    try:
        recorded, point = prepare_resume(ledger, deploy.snapshot_dir, run_id, cli, policy)
        flower_run_id = submit_run(cli, recorded)
        console.print(
            f"resuming run {run_id} after round {point.rounds_done} of "
            f"{recorded.federation.rounds} as Flower run {flower_run_id}"
        )
        return recorded, follow_with_progress(cli, ledger, flower_run_id, recorded, console)
    finally:
        ledger.close()


def prepare_resume(
    ledger: Ledger, snapshot_dir: Path, run_id: int, cli: FlwrCli, policy: Policy | None = None
) -> tuple[Policy, ResumePoint]:
    """Check run ``run_id`` and mark it ``resuming``: the next ServerApp with its policy
    takes it over. Returns the run's own policy and where it goes on from.

    A run that still says ``running`` is first checked not to be running in
    Flower, and recorded as ``interrupted``.
    """
    with ledger.session() as session:
        run, point = check_resumable(session, run_id, snapshot_dir, policy)
        recorded = Policy.from_recorded(run.policy_toml)
        if recorded.sha256() != run.policy_sha256:
            raise ResumeError(
                f"run {run_id} was recorded by an older FedCommons whose policies hashed "
                "differently; it cannot be taken over: start a new run"
            )
        carriers = [f for f, _ in flower_runs(session, run_id) if f is not None]
        status = run.status
    if status == "running":
        _refuse_if_alive(cli, run_id, carriers[-1] if carriers else None)
        mark_interrupted(ledger, run_id, "found without a live Flower run when resumed")
    with ledger.session() as session:
        request_resume(session, run_id)
    return recorded, point


def _refuse_if_alive(cli: FlwrCli, run_id: int, flower_run_id: str | None) -> None:
    """A run that says ``running`` resumes only if Flower no longer runs it."""
    if flower_run_id is None:
        return
    try:
        status = str(cli.run_status(int(flower_run_id))["status"])
    except (FederationError, IndexError, KeyError):
        return  # the SuperLink does not know it (any more): nothing runs it
    if not status.startswith("finished"):
        raise ResumeError(
            f"run {run_id} is still running as Flower run {flower_run_id} ({status}); "
            f"stop it first ('flwr stop {flower_run_id}')"
        )


def follow_with_progress(
    cli: FlwrCli, ledger: Ledger, flower_run_id: int, policy: Policy, console: Console
) -> RunOutcome:
    """Follow with a progress bar; on Ctrl-C or SIGTERM stop the run and record it.

    A run that stopped short and can go on (a lost quorum, a dead ServerApp)
    is refused with how to resume it.
    """
    try:
        # A resumed run's recorded rounds show as soon as its ServerApp takes it over.
        with round_bar(console, policy.federation.rounds) as on_round:
            return follow_run(cli, ledger, flower_run_id, on_round=on_round)
    except LedgerLost as err:
        how = f"--run {err.run_id}" if err.run_id is not None else "--run N"
        raise LedgerLost(
            f"{err}; once the database answers again, 'fedcommons operator resume {how}' "
            "continues it",
            err.run_id,
        ) from None
    except RunFailed as err:
        if err.run_id is None:
            raise
        raise err.saying(
            resume=f"'fedcommons operator resume --run {err.run_id}' continues it"
        ) from None
    except KeyboardInterrupt:
        with contextlib.suppress(FederationError):
            cli.json("stop", str(flower_run_id), cli.connection)
        run, _ = read_rounds(ledger, flower_run_id)
        if run is not None:
            mark_interrupted(ledger, run.id, "stopped by the operator (Ctrl-C or SIGTERM)")
        raise


def summary_of(outcome: RunOutcome, policy: Policy) -> dict[str, Any]:
    """The run's summary, as ``--format json`` prints it."""
    return {
        "flower_run_id": outcome.flower_run_id,
        "ledger_run_id": outcome.ledger_run_id,
        "status": outcome.status,
        "policy_sha256": policy.sha256(),
        "test_accuracy": outcome.test_accuracy,
        "test_loss": outcome.test_loss,
        "rounds": [asdict(r) for r in outcome.rounds],
    }

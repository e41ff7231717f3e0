"""What ``fedcommons operator run`` and ``operator resume`` do, apart from printing.

Both submit the FedCommons app with a policy and follow the run to its end
(:mod:`server.operator.follow`), with a progress bar; a resume first checks that the run
can go on (:mod:`server.app.resume`) and marks it ``resuming``, so the ServerApp
takes it over. Ctrl-C or SIGTERM stops the Flower run (``flwr stop``) and
records the run as ``interrupted``, ready to resume.

:func:`follow_with_progress` is how every command follows a run, the demo's and
the simulation's too: each adds only what is its own (a check that its
processes live, where it keeps the ServerApp's log, how it resumes a run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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
from server.operator.follow import (
    LedgerLost,
    RoundProgress,
    RunFailed,
    RunOutcome,
    follow_run,
    mark_interrupted,
    read_rounds,
    submit_run,
)
from server.operator.progress import round_bar

__all__ = [
    "OPERATOR_RESUME",
    "follow_with_progress",
    "prepare_resume",
    "resume_run",
    "run_policy",
    "summary_of",
]

OPERATOR_RESUME = "'fedcommons operator resume --run {run}' continues it"
"""How the operator goes on with a run that stopped short (``{run}``: its id, or ``N``)."""


def run_policy(files: OperatorFiles, policy: Policy, cli: FlwrCli, console: Console) -> RunOutcome:
    """Submit ``policy`` as a new run and follow it."""
    ledger = Ledger(files.deploy().ledger_url, create=False)  # 'operator init' made it
    try:
        flower_run_id = submit_run(cli, policy)
        console.print(f"submitted Flower run {flower_run_id} ({policy.federation.rounds} rounds)")
        with round_bar(console, policy.federation.rounds) as on_round:
            return follow_with_progress(cli, ledger, flower_run_id, on_round=on_round)
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
        # its recorded rounds show as soon as its ServerApp takes it over
        with round_bar(console, recorded.federation.rounds) as on_round:
            return recorded, follow_with_progress(cli, ledger, flower_run_id, on_round=on_round)
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
    cli: FlwrCli,
    ledger: Ledger,
    flower_run_id: int,
    *,
    on_round: Callable[[RoundProgress], None] | None = None,
    check: Callable[[], None] | None = None,
    keep_log: Callable[[int], Path] | None = None,
    resume: str | None = OPERATOR_RESUME,
    interrupted: str = "stopped by the operator (Ctrl-C or SIGTERM)",
    status_interval: float = 2.0,
) -> RunOutcome:
    """Follow a run to its end, showing each round; a run stopped short is recorded and
    refused in the command's own words. Ctrl-C or SIGTERM stops the run and records it.

    Parameters
    ----------
    on_round : callable, optional
        Shows each round as the ledger records it (a
        :func:`~server.operator.progress.round_bar`'s callback).
    check : callable, optional
        Called on every poll; a :class:`FederationError` from it stops following and
        records the run ``interrupted`` (the demo checks that its processes live).
    keep_log : callable, optional
        Keeps a Flower run's ServerApp log where it outlives the SuperLink and
        returns where; a failure then points there rather than to ``flwr log``.
    resume : str or None (default: :data:`OPERATOR_RESUME`)
        How the command continues a run that can go on, a message's end
        (``{run}``: the run's id); ``None`` if it cannot.
    interrupted : str (default: "stopped by the operator (Ctrl-C or SIGTERM)")
        The reason the ledger records for a run that Ctrl-C or SIGTERM stopped.
    status_interval : float (default: 2.0)
        Seconds between two asks of Flower's status.
    """
    try:
        return follow_run(
            cli, ledger, flower_run_id, on_round=on_round, check=check,
            status_interval=status_interval,
        )  # fmt: skip
    except LedgerLost as err:
        if resume is None:
            raise
        said = resume.format(run="N" if err.run_id is None else err.run_id)
        raise LedgerLost(f"{err}; once the database answers again, {said}", err.run_id) from None
    except RunFailed as err:
        kept = keep_log(flower_run_id) if keep_log is not None and err.log else None
        how = resume.format(run=err.run_id) if resume and err.run_id is not None else None
        if kept is None and how is None:  # budgets ran out, no ServerApp started: said
            raise
        raise err.saying(log=None if kept is None else str(kept), resume=how) from None
    except FederationError as err:  # a process died (``check``), the SuperLink was lost
        run, rounds = read_rounds(ledger, flower_run_id)
        if run is None:
            raise
        mark_interrupted(ledger, run.id, str(err))
        how = resume.format(run=run.id) if resume is not None else None
        if how is None or how in str(err):
            raise  # nothing to add, or it says how to go on already
        raise FederationError(
            f"{err}. Run {run.id} stopped after round {len(rounds)} and is recorded as "
            f"interrupted; {how}"
        ) from None
    except KeyboardInterrupt:
        with contextlib.suppress(FederationError):
            cli.json("stop", str(flower_run_id), cli.connection)
        run, _ = read_rounds(ledger, flower_run_id)
        if run is not None:
            mark_interrupted(ledger, run.id, interrupted)
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

"""Submitting a run and following it to its end, from Flower's status and the ledger.

:func:`submit_run` validates nothing itself (the policy already is) and sends
the FedCommons app with the policy as its run config, never a deploy
setting. :func:`follow_run` polls the ledger for recorded rounds (reported
as :class:`RoundProgress`) and ``flwr ls`` for the run's status, until Flower
says the run finished; a run that did not finish well raises
:class:`RunFailed` (or :class:`PrivacyBudgetExhausted`) with the reasons the
ledger recorded and where the ServerApp's full log is, never its traceback.
Every command follows its runs through
:func:`~server.operator.operate.follow_with_progress`, which shows the rounds
and says how that command resumes a run that can go on.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.policy import Policy
from common.protocol import ExclusionCode
from ledger import Ledger, LedgerUnreachable, finish_run
from ledger.runs import RESUMABLE
from ledger.schema import Charge, Exclusion, FlowerRun, Round, Run
from server.operator.flower import FederationError, FlwrCli, build_app_dir, write_run_config

__all__ = [
    "LedgerLost",
    "PrivacyBudgetExhausted",
    "RoundProgress",
    "RunFailed",
    "RunOutcome",
    "SuperLinkLost",
    "follow_run",
    "mark_interrupted",
    "read_rounds",
    "submit_run",
]


class SuperLinkLost(FederationError):
    """The SuperLink stopped answering while a run was followed; the run is resumable."""


class LedgerLost(FederationError):
    """The ledger's database stayed unreachable while a run was followed; the run is resumable.

    ``run_id`` is the ledger's run (``None`` if it was not known yet).
    """

    def __init__(self, message: str, run_id: int | None) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunFailed(FederationError):
    """A run ended without finishing in the ledger, or Flower says it did not complete.

    Parameters
    ----------
    what : str
        What happened, in FedCommons' words (the ledger's reasons, Flower's status).
    run_id : int, optional
        The ledger's run when it stopped short and can go on: a resume
        continues it (:meth:`saying` adds how).
    log : str (default: "")
        Where the ServerApp's full log is: a command or a file.
    resume : str (default: "")
        How to go on, the message's end ("'fedcommons operator resume --run 3'
        continues it").
    """

    def __init__(
        self, what: str, *, run_id: int | None = None, log: str = "", resume: str = ""
    ) -> None:
        self.what, self.run_id, self.log, self.resume = what, run_id, log, resume
        super().__init__(
            what
            + (f". The ServerApp's full log: {log}" if log else "")
            + (f"; {resume}" if resume else "")
        )

    def saying(self, *, log: str | None = None, resume: str | None = None) -> RunFailed:
        """The same failure with where its log is, or how to go on, said otherwise."""
        return type(self)(
            self.what,
            run_id=self.run_id,
            log=self.log if log is None else log,
            resume=self.resume if resume is None else resume,
        )


class PrivacyBudgetExhausted(RunFailed):
    """The run stopped because too few institutions had privacy budget left."""


@dataclass(frozen=True)
class RoundProgress:
    """One recorded round, as a progress display shows it."""

    round: int
    accuracy: float
    loss: float
    participants: int
    seconds: float
    epsilon: dict[str, float]
    """Cumulative epsilon per institution after this round (infinite without DP)."""


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: its ledger id, Flower's id and status, and every round."""

    flower_run_id: int
    ledger_run_id: int
    status: str
    test_accuracy: float | None
    test_loss: float | None
    rounds: list[RoundProgress]


def submit_run(cli: FlwrCli, policy: Policy, workdir: Path | None = None) -> int:
    """Send the FedCommons app with ``policy`` as its run config; return Flower's run id.

    The app and the run-config file are laid out in ``workdir`` (default: a
    temporary folder removed afterwards).
    """
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return _submit(cli, policy, workdir)
    with tempfile.TemporaryDirectory(prefix="fedcommons-run-") as folder:
        return _submit(cli, policy, Path(folder))


def _submit(cli: FlwrCli, policy: Policy, folder: Path) -> int:
    run_config = write_run_config(folder / "run-config.toml", policy.to_run_config())
    return cli.submit(build_app_dir(folder / "app"), run_config)


def read_rounds(ledger: Ledger, flower_run_id: int) -> tuple[Run | None, list[RoundProgress]]:
    """The ledger's run for a Flower run id (``None`` until it starts) and its rounds.

    A dropped connection is tried again (:meth:`~ledger.Ledger.transact`).
    """
    return ledger.transact(
        lambda session: _read_rounds(session, flower_run_id), what="reading the run's rounds"
    )


def _read_rounds(session: Session, flower_run_id: int) -> tuple[Run | None, list[RoundProgress]]:
    run = session.scalar(select(Run).where(Run.flower_run_id == str(flower_run_id)))
    if run is None:  # a resumed run: carried by this Flower run from a later round
        run = session.scalar(
            select(Run)
            .join(FlowerRun, FlowerRun.run_id == Run.id)
            .where(FlowerRun.flower_run_id == str(flower_run_id))
        )
    if run is None:
        return None, []
    rows = session.scalars(select(Round).where(Round.run_id == run.id).order_by(Round.number)).all()
    epsilon: dict[int, dict[str, float]] = {}
    for charge in session.scalars(select(Charge).where(Charge.run_id == run.id)):
        epsilon.setdefault(charge.round_number, {})[charge.participant.name] = charge.epsilon
    return run, [
        RoundProgress(
            r.number,
            r.accuracy,
            r.loss,
            r.num_participants,
            r.seconds,
            epsilon.get(r.number, {}),
        )
        for r in rows
    ]


def exhausted_budgets(ledger: Ledger, run_id: int) -> list[str]:
    """The budget refusals recorded for a run, one line each."""
    with ledger.session() as session:
        rows = session.scalars(
            select(Exclusion)
            .where(Exclusion.run_id == run_id, Exclusion.code == ExclusionCode.BUDGET_EXHAUSTED)
            .order_by(Exclusion.id)
        ).all()
        return [f"round {e.round_number}: {e.reason}" for e in rows]


def follow_run(
    cli: FlwrCli,
    ledger: Ledger,
    flower_run_id: int,
    *,
    on_round: Callable[[RoundProgress], None] | None = None,
    check: Callable[[], None] | None = None,
    poll: float = 0.5,
    status_interval: float = 2.0,
    lost_after: float = 30.0,
    start_within: float = 180.0,
) -> RunOutcome:
    """Report each round as the ledger records it, until Flower says the run finished.

    Parameters
    ----------
    check : callable, optional
        Called on every poll; raise from it to stop following (the demo
        checks that its processes are alive).
    lost_after : float (default: 30.0)
        Seconds the SuperLink may fail to answer before the run counts as
        lost: it is recorded ``interrupted`` (resumable) and
        :class:`SuperLinkLost` is raised.
    start_within : float (default: 180.0)
        Seconds Flower may keep the run pending (no ServerApp started) before
        it is stopped and :class:`RunFailed` says where to look.

    Raises
    ------
    LedgerLost
        The ledger's database stayed unreachable (after
        :meth:`~ledger.Ledger.transact`'s retries); the run is recorded
        ``interrupted`` if the ledger answers once more, and is resumable.
    PrivacyBudgetExhausted
        The run stopped because budgets ran out (each refusal is listed).
    RunFailed
        Any other run that did not finish: the ledger's reasons, Flower's
        status and how to read the ServerApp's full log; ``run_id`` is set
        when the run can be resumed.
    """
    followed: list[int | None] = [None]  # the ledger's run, once it is known
    try:
        return _follow_run(
            cli, ledger, flower_run_id, followed, on_round=on_round, check=check, poll=poll,
            status_interval=status_interval, lost_after=lost_after, start_within=start_within,
        )  # fmt: skip
    except LedgerUnreachable as err:
        raise _ledger_lost(ledger, followed[0], err) from None


def _follow_run(
    cli: FlwrCli,
    ledger: Ledger,
    flower_run_id: int,
    followed: list[int | None],
    *,
    on_round: Callable[[RoundProgress], None] | None,
    check: Callable[[], None] | None,
    poll: float,
    status_interval: float,
    lost_after: float,
    start_within: float,
) -> RunOutcome:
    seen, next_status = 0, 0.0
    status: dict[str, Any] = {}
    unanswered_since: float | None = None
    started = time.monotonic()
    while True:
        run, rounds = read_rounds(ledger, flower_run_id)
        followed[0] = run.id if run is not None else None
        for progress in rounds[seen:]:
            if on_round is not None:
                on_round(progress)
        seen = len(rounds)
        if check is not None:
            check()
        if time.monotonic() >= next_status:
            try:
                status = cli.run_status(flower_run_id)
                unanswered_since = None
            except FederationError as err:
                unanswered_since = unanswered_since or time.monotonic()
                if time.monotonic() - unanswered_since >= lost_after:
                    _lost(ledger, flower_run_id, err, lost_after)
            next_status = time.monotonic() + status_interval
            if str(status.get("status", "")).startswith("finished"):
                break
            if status.get("status") == "pending" and time.monotonic() - started > start_within:
                cli.json("stop", str(flower_run_id), cli.connection)
                raise RunFailed(
                    f"Flower run {flower_run_id} was still pending after {start_within:.0f} s: "
                    "the SuperLink never started its ServerApp, so it was stopped. Its log "
                    "says why (often: its SuperExec cannot reach it, e.g. a certificate "
                    "that does not cover 127.0.0.1)"
                )
        time.sleep(poll)
    run, rounds = read_rounds(ledger, flower_run_id)
    for progress in rounds[seen:]:
        if on_round is not None:
            on_round(progress)
    if run is not None and run.status == "running":  # the ServerApp could not say how it ended
        reason = f"the Flower run ended as {status['status']} ({status.get('status-details', '')})"
        run = mark_interrupted(ledger, run.id, reason)
    if run is None or run.status != "finished" or not str(status["status"]).endswith("completed"):
        exhausted = exhausted_budgets(ledger, run.id) if run is not None else []
        if run is not None and exhausted:
            needed = Policy.from_recorded(run.policy_toml).federation.min_nodes
            raise PrivacyBudgetExhausted(
                f"the run stopped: fewer than {needed} institutions have privacy budget left "
                "for another round.\n  " + "\n  ".join(exhausted) + "\nA dataset's budget "
                "covers every run that uses it; see 'fedcommons client budget --state DIR' "
                "and 'fedcommons audit show'."
            )
        raise _stopped(cli, flower_run_id, status, run, len(rounds))
    return RunOutcome(
        flower_run_id=flower_run_id,
        ledger_run_id=run.id,
        status=str(status["status"]),
        test_accuracy=run.test_accuracy,
        test_loss=run.test_loss,
        rounds=rounds,
    )


def _ledger_lost(ledger: Ledger, run_id: int | None, err: LedgerUnreachable) -> LedgerLost:
    """The ledger stayed unreachable: record the run interrupted if it answers once more."""
    if run_id is None:
        return LedgerLost(f"{err}; the run was not in the ledger yet", None)
    try:
        with ledger.session() as session:
            run = session.get(Run, run_id)
            if run is not None and run.status in ("running", "resuming"):
                finish_run(session, run_id, "interrupted", reason=f"lost the ledger: {err}")
        recorded = "is recorded as interrupted"
    except LedgerUnreachable:
        recorded = "still says running in the ledger (the resume records it interrupted)"
    return LedgerLost(f"{err}. Run {run_id} {recorded}", run_id)


def _stopped(
    cli: FlwrCli, flower_run_id: int, status: dict[str, Any], run: Run | None, rounds: int
) -> RunFailed:
    """Why a run stopped short: the ledger's reason and Flower's status, and where the
    ServerApp's full log is; its traceback frames stay in that log."""
    details = status.get("status-details") or ""
    log = (
        f"FLWR_HOME={shlex.quote(str(cli.flwr_home))} flwr log {flower_run_id} "
        f"{cli.connection} --show"
    )
    if run is None:
        error = _last_error(cli.run_log(flower_run_id))
        return RunFailed(
            f"Flower run {flower_run_id} ended as {status['status']} ({details}) before its "
            "ServerApp recorded a run in the ledger" + (f": {error}" if error else ""),
            log=log,
        )
    return RunFailed(
        f"run {run.id} stopped with {rounds} of {run.planned_rounds} rounds recorded "
        f"(Flower run {flower_run_id}: {status['status']}): "
        f"{run.status_reason or details or 'no reason was recorded'}",
        run_id=run.id if run.status in RESUMABLE else None,
        log=log,
    )


def _last_error(log: str) -> str:
    """The exception that ended a log's last traceback (``ValueError: ...``), or ``""``."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return ""
    after = (line for line in lines[starts[-1] + 1 :] if line and not line[0].isspace())
    return next(after, "").strip()


def _lost(ledger: Ledger, flower_run_id: int, err: FederationError, waited: float) -> None:
    """The SuperLink stopped answering: record the run interrupted and say how to go on."""
    run, rounds = read_rounds(ledger, flower_run_id)
    reason = f"lost the SuperLink: no answer for {waited:.0f} s ({err})"
    if run is None:
        raise SuperLinkLost(f"{reason}; Flower run {flower_run_id} recorded nothing yet")
    mark_interrupted(ledger, run.id, reason)
    raise SuperLinkLost(
        f"{reason}. Run {run.id} stopped after round {len(rounds)} and is recorded as "
        f"interrupted; once the SuperLink is back, 'fedcommons operator resume --run {run.id}' "
        "continues it"
    )


def mark_interrupted(ledger: Ledger, run_id: int, reason: str) -> Run | None:
    """Record that a run whose processes are gone did not finish (if it still says running).

    The ServerApp records how its run ends; one killed outright cannot, so
    whoever notices (the demo, ``operator run``, ``operator resume``) does.
    """

    def record(session: Session) -> Run | None:
        run = session.get(Run, run_id)
        if run is not None and run.status in ("running", "resuming"):
            finish_run(session, run_id, "interrupted", reason=reason)
        return run

    return ledger.transact(record, what=f"recording run {run_id} interrupted")

"""How a run that stopped short is told: the ledger's reasons, where the full log is, how to
go on; never the ServerApp's traceback. Flower's side is a ``flwr`` CLI that answers as it
does once a run has ended; the ledger is a real one.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from fedcommons.demo import RESUME, node_exited
from ledger import Ledger, finish_run
from ledger.report import ledger_report
from server.operator.flower import FederationError, FlwrCli
from server.operator.follow import RunFailed, follow_run
from server.operator.operate import follow_with_progress
from tests.support.sealed_updates import ledger_with_run

FLOWER_RUN = 9

SERVERAPP_LOG = """\
INFO :      [ROUND 2]
ERROR :     run stopped: round 2: 1 of the required 2 nodes returned an update
Traceback (most recent call last):
  File "/app/server/app/server_app.py", line 165, in main
    result = strategy.start(
  File "/app/server/app/strategy/composed.py", line 171, in aggregate_train
    raise RoundFailed(
server.app.strategy.composed.RoundFailed: round 2: 1 of the required 2 nodes returned an update
"""

LOST_QUORUM = (
    "round 2: 1 of the required 2 nodes returned an update (company-c [excluded]: the node "
    "is gone (503); university-b [excluded]: the node is gone (503))"
)


class _EndedCli(FlwrCli):
    """The ``flwr`` CLI once Flower has ended the run as failed."""

    def run_status(self, run_id: int) -> dict[str, Any]:
        return {"status": "finished:failed", "status-details": "exit code 1"}

    def run_log(self, run_id: int, timeout: float = 60.0) -> str:
        return SERVERAPP_LOG


@pytest.fixture
def cli(tmp_path: Path) -> FlwrCli:
    return _EndedCli(tmp_path / "flwr-home")


def _ledger(tmp_path: Path, status: str | None, reason: str | None = None) -> tuple[Ledger, int]:
    """A ledger with one run of Flower run 9, ended as ``status`` (``None``: still running)."""
    ledger, run_id = ledger_with_run(tmp_path, ("company-c", "university-a", "university-b"))
    if status is not None:
        with ledger.session() as session:
            finish_run(session, run_id, status, reason=reason)
    return ledger, run_id


def _failure(cli: FlwrCli, ledger: Ledger) -> RunFailed:
    with pytest.raises(RunFailed) as failed:
        follow_run(cli, ledger, FLOWER_RUN, poll=0.01)
    return failed.value


def test_a_lost_quorum_says_who_was_excluded_and_where_the_log_is_without_its_frames(
    cli: FlwrCli, tmp_path: Path
) -> None:
    ledger, run_id = _ledger(tmp_path, "failed", LOST_QUORUM)
    failure = _failure(cli, ledger)
    ledger.close()
    assert str(failure) == (
        f"run {run_id} stopped with 0 of 1 rounds recorded (Flower run 9: finished:failed): "
        f"{LOST_QUORUM}. The ServerApp's full log: FLWR_HOME={tmp_path / 'flwr-home'} flwr log 9 "
        "fedcommons --show"
    )
    assert "Traceback" not in str(failure) and 'File "' not in str(failure)
    assert failure.run_id == run_id  # 'failed' resumes


def test_operator_run_ends_a_failure_that_can_go_on_with_the_resume_command(
    cli: FlwrCli, tmp_path: Path
) -> None:
    ledger, run_id = _ledger(tmp_path, "failed", LOST_QUORUM)
    with pytest.raises(RunFailed) as failed:
        follow_with_progress(cli, ledger, FLOWER_RUN)
    ledger.close()
    message = str(failed.value)
    assert message.startswith(f"run {run_id} stopped with 0 of 1 rounds recorded")
    assert message.endswith(
        f"flwr log 9 fedcommons --show; 'fedcommons operator resume --run {run_id}' continues it"
    )


def test_a_killed_serverapp_leaves_its_run_interrupted_and_says_how_to_resume_it(
    cli: FlwrCli, tmp_path: Path
) -> None:
    ledger, run_id = _ledger(tmp_path, None)  # nobody could record how it ended
    with pytest.raises(RunFailed) as failed:
        follow_with_progress(cli, ledger, FLOWER_RUN)
    with ledger.session() as session:
        (run,) = ledger_report(session)["runs"]
    ledger.close()
    assert run["status"] == "interrupted"
    message = str(failed.value)
    assert ": the Flower run ended as finished:failed (exit code 1). The ServerApp's" in message
    assert message.endswith(f"'fedcommons operator resume --run {run_id}' continues it")


def test_the_demo_fails_through_the_same_follower_in_its_own_words(
    cli: FlwrCli, tmp_path: Path
) -> None:
    """The demo keeps the log its SuperLink takes down with it and says its own resume."""
    ledger, run_id = _ledger(tmp_path, "failed", LOST_QUORUM)
    kept = tmp_path / "logs" / f"run-{FLOWER_RUN}.log"
    with pytest.raises(RunFailed) as failed:
        follow_with_progress(cli, ledger, FLOWER_RUN, keep_log=lambda _: kept, resume=RESUME)
    ledger.close()
    message = str(failed.value)
    assert message.startswith(f"run {run_id} stopped with 0 of 1 rounds recorded")
    assert message.endswith(f". The ServerApp's full log: {kept}; {RESUME}")
    assert failed.value.run_id == run_id


def test_a_process_that_dies_while_followed_leaves_the_run_interrupted_and_resumable(
    cli: FlwrCli, tmp_path: Path
) -> None:
    """What the demo's check raises (its SuperLink exited) is recorded, then told with how
    the demo goes on."""
    ledger, run_id = _ledger(tmp_path, None)

    def superlink_gone() -> None:
        raise FederationError("the SuperLink exited unexpectedly with code -9")

    with pytest.raises(FederationError) as failed:
        follow_with_progress(cli, ledger, FLOWER_RUN, check=superlink_gone, resume=RESUME)
    with ledger.session() as session:
        (run,) = ledger_report(session)["runs"]
    ledger.close()
    assert (run["status"], run["status_reason"]) == (
        "interrupted", "the SuperLink exited unexpectedly with code -9",
    )  # fmt: skip
    assert str(failed.value) == (
        f"the SuperLink exited unexpectedly with code -9. Run {run_id} stopped after round 0 "
        f"and is recorded as interrupted; {RESUME}"
    )


def test_every_command_follows_its_runs_through_one_function() -> None:
    """The operator's run and resume, the demo and the simulation all call
    ``follow_with_progress``; only it runs the polling loop (``follow_run``)."""
    root = Path(__file__).resolve().parents[2]
    called = {
        path.relative_to(root).as_posix(): _called(path)
        for package in ("audit", "client", "common", "fedcommons", "ledger", "server")
        for path in (root / package).rglob("*.py")
    }
    assert {module for module, names in called.items() if "follow_run" in names} == {
        "server/operator/operate.py"
    }
    assert {module for module, names in called.items() if "follow_with_progress" in names} == {
        "server/operator/operate.py", "fedcommons/demo.py", "fedcommons/simulation.py",
    }  # fmt: skip


def _called(path: Path) -> set[str]:
    """The plain names a module calls (``name(...)``)."""
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


def test_a_serverapp_that_died_before_recording_a_run_names_its_last_error_only(
    cli: FlwrCli, tmp_path: Path
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")  # no run for Flower run 9
    failure = _failure(cli, ledger)
    ledger.close()
    assert str(failure) == (
        "Flower run 9 ended as finished:failed (exit code 1) before its ServerApp recorded a "
        "run in the ledger: server.app.strategy.composed.RoundFailed: round 2: 1 of the required 2 "
        f"nodes returned an update. The ServerApp's full log: FLWR_HOME={tmp_path / 'flwr-home'} "
        "flwr log 9 fedcommons --show"
    )
    assert failure.run_id is None  # nothing to resume


def test_a_failure_keeps_its_reasons_when_its_log_or_resume_is_said_otherwise() -> None:
    failure = RunFailed("run 3 stopped", run_id=3, log="flwr log 9")
    kept = failure.saying(log="/w/logs/run-9.log", resume="'demo --resume' continues it")
    assert str(kept) == (
        "run 3 stopped. The ServerApp's full log: /w/logs/run-9.log; 'demo --resume' continues it"
    )
    assert (kept.run_id, type(kept)) == (3, RunFailed)


def test_the_demo_says_a_supernode_exited_and_whether_the_quorum_still_holds() -> None:
    assert node_exited("company-c", 2, 3, 2) == (
        "the SuperNode of company-c exited; the run goes on while the quorum holds "
        "(2 of 3 nodes alive, quorum 2)"
    )
    assert node_exited("university-b", 1, 3, 2) == (
        "the SuperNode of university-b exited and the quorum is lost (1 of 3 nodes alive, "
        "quorum 2): the run stops unless enough nodes come back"
    )

"""A ledger whose database connection drops: restarts, failovers and idle reapers.

On the real PostgreSQL server, connections are cut with
``pg_terminate_backend`` exactly as an administrator, a restart or a reaper
cuts them: a pooled connection that was cut is replaced before use, a
transaction cut midway runs again in a new one and is written once, and a
database that stays away is one clear line naming the ledger, never a SQL
statement. The follower (``operator run``, ``operator resume``, the demo)
says the run is resumable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from ledger import Ledger, LedgerUnreachable, enrol_participant, start_run
from ledger import store as ledger_store
from ledger.schema import Participant, Run
from ledger.verify import verify_ledger
from server.operator.flower import FlwrCli
from server.operator.follow import LedgerLost, follow_run
from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.postgres


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[Ledger]:
    opened = Ledger(postgres_url)
    yield opened
    opened.close()


def _terminate(pid: int | None = None, database: str | None = None) -> int:
    """Cut one backend (``pid``) or every backend of ``database``, as an administrator does."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            if pid is not None:
                query = "SELECT count(pg_terminate_backend(:pid))"
                return int(connection.execute(text(query), {"pid": pid}).scalar_one())
            query = (
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            )
            return int(connection.execute(text(query), {"db": database}).scalar_one())
    finally:
        admin.dispose()


def _backend(session: Session) -> int:
    return int(session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _participants(ledger: Ledger) -> int:
    with ledger.session() as session:
        return int(session.scalar(select(func.count()).select_from(Participant)) or 0)


def test_a_pooled_connection_the_server_cut_is_replaced_before_use(ledger: Ledger) -> None:
    with ledger.session() as session:
        pid = _backend(session)
    assert _terminate(pid=pid) == 1  # the pooled connection is now dead
    with ledger.session() as session:  # pre-ping: a new one, no error
        assert _backend(session) != pid
        enrol_participant(session, "university-a", "academia")
    assert _participants(ledger) == 1


def test_a_transaction_cut_midway_runs_again_and_is_written_once(ledger: Ledger) -> None:
    tries: list[int] = []

    def work(session: Session) -> str:
        enrol_participant(session, f"university-{len(tries)}", "academia")
        session.flush()
        tries.append(_backend(session))
        if len(tries) == 1:
            _terminate(pid=tries[0])  # cut before the commit: the first try is rolled back
        return "done"

    assert ledger.transact(work, what="enrolling") == "done"
    assert len(tries) == 2 and tries[0] != tries[1]
    with ledger.session() as session:
        assert list(session.scalars(select(Participant.name))) == ["university-1"]
    assert verify_ledger(ledger).rows_checked > 0  # the chain holds: nothing half-written


def test_a_database_that_stays_away_is_one_line_naming_the_ledger(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_store, "RECONNECT_DELAYS", (0.01, 0.01))

    def work(session: Session) -> None:
        enrol_participant(session, "university-a", "academia")
        session.flush()
        _terminate(pid=_backend(session))  # every try is cut

    with pytest.raises(LedgerUnreachable) as lost:
        ledger.transact(work, what="enrolling university-a")
    message = str(lost.value)
    assert "\n" not in message and "SELECT" not in message and "INSERT" not in message
    assert message.startswith(f"lost the connection to the ledger {ledger.shown}: ")
    assert "after 2 reconnection attempts" in message and "during enrolling university-a" in message
    assert _participants(ledger) == 0  # nothing of it was written


def test_the_follower_that_loses_the_ledger_says_the_run_resumes(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is dropped under a followed run: a clean LedgerLost naming the run."""
    monkeypatch.setattr(ledger_store, "RECONNECT_DELAYS", (0.01, 0.01))
    ledger = Ledger(postgres_url)
    with ledger.session() as session:
        run_id = start_run(
            session, policy_sha256="0" * 64, policy_toml="", model="cnn", dataset="d",
            initial_model_sha256="1" * 64, planned_rounds=2, flower_run_id=77,
        ).id  # fmt: skip
    database = ledger.engine.url.database
    assert database is not None
    seen: list[int] = []

    class Cli(FlwrCli):
        def run_status(self, run_id: int) -> dict[str, str]:
            seen.append(run_id)
            _terminate(database=database)  # the database restarts...
            admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:  # ...and does not come back
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            admin.dispose()
            return {"status": "running"}

    try:
        with pytest.raises(LedgerLost) as lost:
            follow_run(Cli(tmp_path / "flwr"), ledger, 77, poll=0.01, status_interval=0.0)
    finally:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert seen == [77]
    assert lost.value.run_id == run_id
    message = str(lost.value)
    assert message.startswith(f"lost the connection to the ledger {ledger.shown}")
    assert f"Run {run_id} still says running" in message and "\n" not in message
    with ledger.session() as session:
        assert session.get(Run, run_id).status == "running"  # type: ignore[union-attr]
    ledger.close()

"""Opening the ledger: its URL, its migrations and its sessions.

Query and record functions (:mod:`server.ledger.facts`,
:mod:`server.ledger.report`) take a :class:`~sqlalchemy.orm.Session` opened
by the caller (``with ledger.session() as s: ...``), so one short transaction
covers one fact.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import UserError

__all__ = ["Ledger", "LedgerError", "normalise_url"]

MIGRATIONS = Path(__file__).parent / "migrations"


class LedgerError(UserError, RuntimeError):
    """The ledger cannot be opened or a fact contradicts what it holds."""


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` and route it to the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise LedgerError(f"invalid ledger URL {url!r}: {err}") from err
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return parsed.render_as_string(hide_password=False)


class Ledger:
    """A migrated ledger database.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:///work/ledger.db`` or
        ``postgresql://user@host/db``.
    migrate : bool (default: True)
        Bring the schema up to date (Alembic ``upgrade head``) on open.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = normalise_url(url)
        self.engine: Engine = create_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
            f"ledger-session-{id(self)}", default=None
        )
        if migrate:
            self.upgrade()
        else:
            self._require_schema()

    def upgrade(self) -> None:
        """Apply every Alembic migration not yet applied."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except OperationalError as err:
            raise LedgerError(f"cannot open ledger {self.url}: {err.orig}") from err

    def _require_schema(self) -> None:
        parsed = make_url(self.url)
        database = parsed.database or ""
        is_file_db = parsed.drivername.startswith("sqlite") and database not in ("", ":memory:")
        if is_file_db and not Path(database).is_file():
            raise LedgerError(f"no ledger at {self.url}: the file does not exist")
        try:
            with self.engine.connect() as connection:
                found = inspect(connection).has_table("alembic_version")
        except OperationalError as err:
            raise LedgerError(f"cannot open ledger {self.url}: {err.orig}") from err
        if not found:
            raise LedgerError(f"{self.url} is not a FedCommons ledger (no schema version table)")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error.

        Re-entrant: a nested call joins the outer transaction.
        """
        outer = self._current.get()
        if outer is not None:
            yield outer
            return
        with self._sessions.begin() as session:
            token = self._current.set(session)
            try:
                yield session
            finally:
                self._current.reset(token)

    def close(self) -> None:
        self.engine.dispose()

"""Opening the ledger: its URL, its migrations and its sessions.

Query and record functions (:mod:`server.ledger.facts`,
:mod:`server.ledger.report`) take a :class:`~sqlalchemy.orm.Session` opened
by the caller (``with ledger.session() as s: ...``), so one short transaction
covers one fact.
"""

from __future__ import annotations

import contextvars
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, QueuePool, create_engine, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import UserError

__all__ = ["Ledger", "LedgerError", "masked_url", "normalise_url"]

MIGRATIONS = Path(__file__).parent / "migrations"


class LedgerError(UserError, RuntimeError):
    """The ledger cannot be opened or a fact contradicts what it holds."""


SUPPORTED = "sqlite:///FILE or postgresql://USER@HOST/DATABASE"


def masked_url(url: str) -> str:
    """``url`` as it may be shown: its password, if any, replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparseable URL)"


def _without_secret(text: str, url: URL) -> str:
    """``text`` with ``url``'s password, wherever it appears, replaced by ``***``."""
    return text.replace(url.password, "***") if url.password else text


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` and route it to the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LedgerError(f"invalid ledger URL {masked_url(url)!r}: give {SUPPORTED}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _engine(url: str, read_only: bool = False) -> Engine:
    """The engine for ``url``; unknown dialects and missing drivers are clear errors.

    ``read_only``: the database itself refuses writes on these connections
    (SQLite opens the file with ``mode=ro``; PostgreSQL sessions default to
    read-only transactions).
    """
    parsed = make_url(url)
    try:
        if read_only and parsed.get_backend_name() == "sqlite" and parsed.database:
            target = f"file:{Path(parsed.database).resolve()}?mode=ro"
            # A pool of its own connections per checkout, as for any file: the URL
            # says "sqlite://", for which SQLAlchemy would otherwise share one
            # connection per thread and close it under another thread's feet.
            return create_engine(
                "sqlite://",
                creator=lambda: sqlite3.connect(target, uri=True, check_same_thread=False),
                poolclass=QueuePool,
            )
        if read_only and parsed.get_backend_name() == "postgresql":
            return create_engine(
                url, connect_args={"options": "-c default_transaction_read_only=on"}
            )
        return create_engine(url)
    except NoSuchModuleError:
        raise LedgerError(
            f"ledger URL {masked_url(url)}: unknown database '{parsed.get_backend_name()}'; "
            f"give {SUPPORTED}"
        ) from None
    except ImportError as err:
        raise LedgerError(
            f"ledger URL {masked_url(url)}: the driver for '{parsed.drivername}' is not "
            f"installed ({err.name or err}); FedCommons ledgers are {SUPPORTED}"
        ) from None


class Ledger:
    """A migrated ledger database.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:///work/ledger.db`` or
        ``postgresql://user@host/db``.
    read_only : bool (default: False)
        Open connections the database refuses to write on (implies not
        migrating): the dashboard's.
    migrate : bool (default: True)
        Bring the schema up to date (Alembic ``upgrade head``) on open; a
        SQLite file (and its folder) is created if missing. Without it, the
        ledger must exist and nothing is created: read-only commands open it so.

    Errors name the URL with its password masked (:attr:`shown`).
    """

    def __init__(self, url: str, *, migrate: bool = True, read_only: bool = False) -> None:
        migrate = migrate and not read_only
        self.url = normalise_url(url)
        self._parsed = make_url(self.url)
        self.shown = masked_url(self.url)
        """The URL as it may be printed or logged (password masked)."""
        if migrate and self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        elif self._file is not None and not self._file.is_file():
            raise LedgerError(f"no ledger at {self.shown}: the file does not exist")
        self.engine: Engine = _engine(self.url, read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
            f"ledger-session-{id(self)}", default=None
        )
        if migrate:
            self.upgrade()
        else:
            self._require_schema()

    @property
    def _file(self) -> Path | None:
        """The SQLite file, for a file-backed SQLite ledger."""
        database = self._parsed.database
        if self._parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
            return None
        return Path(str(database))

    def _cannot_open(self, err: DBAPIError) -> LedgerError:
        reason = " ".join(_without_secret(str(err.orig), self._parsed).split())
        if self._file is not None and "not a database" in reason:
            return LedgerError(f"{self._file} is not a ledger: not a SQLite database file")
        return LedgerError(f"cannot open ledger {self.shown}: {reason}")

    def upgrade(self) -> None:
        """Apply every Alembic migration not yet applied."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except DBAPIError as err:
            raise self._cannot_open(err) from None

    def _require_schema(self) -> None:
        try:
            with self.engine.connect() as connection:
                found = inspect(connection).has_table("alembic_version")
        except DBAPIError as err:
            raise self._cannot_open(err) from None
        if not found:
            raise LedgerError(f"{self.shown} is not a FedCommons ledger (no schema version table)")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error.

        Re-entrant: a nested call joins the outer transaction.
        """
        outer = self._current.get()
        if outer is not None:
            yield outer
            return
        try:
            with self._sessions.begin() as session:
                token = self._current.set(session)
                try:
                    yield session
                finally:
                    self._current.reset(token)
        except OperationalError as err:
            if _is_lock_timeout(err):
                raise LedgerError(
                    f"the ledger {self.shown} is busy: another process holds its write lock "
                    "and did not let go in time; nothing was written, so the same command "
                    "can simply be run again"
                ) from None
            raise

    def close(self) -> None:
        self.engine.dispose()


def _is_lock_timeout(err: OperationalError) -> bool:
    """Whether ``err`` is a write lock that was not granted in time (SQLite or PostgreSQL)."""
    text = str(err.orig).lower()
    return "database is locked" in text or "lock timeout" in text or "could not obtain lock" in text

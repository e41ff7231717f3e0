"""Opening the ledger: its URL, its migrations and its sessions.

Query and record functions (:mod:`ledger.facts`,
:mod:`ledger.report`) take a :class:`~sqlalchemy.orm.Session` opened
by the caller (``with ledger.session() as s: ...``), so one short transaction
covers one fact.
"""

from __future__ import annotations

import contextvars
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, QueuePool, create_engine, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import UserError

__all__ = ["Ledger", "LedgerError", "LedgerUnreachable", "masked_url", "normalise_url"]

MIGRATIONS = Path(__file__).parent / "migrations"
RECONNECT_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
"""Seconds :meth:`Ledger.transact` waits before each new try after a lost connection
(31 s in all: a database restart or failover, not an outage)."""

log = logging.getLogger(__name__)
T = TypeVar("T")


class LedgerError(UserError, RuntimeError):
    """The ledger cannot be opened or a fact contradicts what it holds."""


class LedgerUnreachable(LedgerError):
    """The connection to the ledger's database was lost (a restart, a failover, an idle
    reaper) and a new one could not be made; nothing of the transaction was written."""


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


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _revisions() -> frozenset[str]:
    """Every schema version FedCommons's migrations write."""
    scripts = ScriptDirectory.from_config(_alembic_config())
    return frozenset(script.revision for script in scripts.walk_revisions())


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
                pool_pre_ping=True,
            )
        if read_only and parsed.get_backend_name() == "postgresql":
            return create_engine(
                url,
                connect_args={"options": "-c default_transaction_read_only=on"},
                pool_pre_ping=True,
            )
        # pre-ping: a pooled connection the server dropped is replaced before it is used
        return create_engine(url, pool_pre_ping=True)
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
        Bring the schema up to date (Alembic ``upgrade head``) on open.
        Without it, the ledger must exist and nothing is written: read-only
        commands open it so.
    create : bool (default: True)
        With ``migrate``: create the ledger if there is none (a SQLite file
        and its folder, or the schema in an empty database). Without it, a
        missing ledger or a database that is not a FedCommons ledger is
        refused before anything is written: commands that work on an
        existing ledger (tokens, resuming a run) open it so.

    Errors name the URL with its password masked (:attr:`shown`).
    """

    def __init__(
        self, url: str, *, migrate: bool = True, create: bool = True, read_only: bool = False
    ) -> None:
        migrate = migrate and not read_only
        self.url = normalise_url(url)
        self._parsed = make_url(self.url)
        self.shown = masked_url(self.url)
        """The URL as it may be printed or logged (password masked)."""
        if migrate and create and self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        elif self._file is not None and not self._file.is_file():
            raise LedgerError(f"no ledger at {self.shown}: the file does not exist")
        self.engine: Engine = _engine(self.url, read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
            f"ledger-session-{id(self)}", default=None
        )
        if not (migrate and create):
            self._require_schema()
        if migrate:
            self.upgrade()

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
        config = _alembic_config()
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except DBAPIError as err:
            raise self._cannot_open(err) from None

    def _require_schema(self) -> None:
        """Refuse a database that is not a FedCommons ledger (reading only)."""
        try:
            with self.engine.connect() as connection:
                found = inspect(connection).has_table("alembic_version")
                version = (
                    connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
                    if found
                    else None
                )
        except DBAPIError as err:
            raise self._cannot_open(err) from None
        if not found:
            raise LedgerError(f"{self.shown} is not a FedCommons ledger (no schema version table)")
        if version not in _revisions():
            raise LedgerError(
                f"{self.shown} is not a FedCommons ledger: its schema version {version!r} is "
                "none of FedCommons's migrations"
            )

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
        except DBAPIError as err:
            if isinstance(err, OperationalError) and _is_lock_timeout(err):
                raise LedgerError(
                    f"the ledger {self.shown} is busy: another process holds its write lock "
                    "and did not let go in time; nothing was written, so the same command "
                    "can simply be run again"
                ) from None
            if _is_disconnect(err):
                raise self._unreachable(err) from None
            raise

    def _unreachable(self, err: DBAPIError) -> LedgerUnreachable:
        first = _without_secret(str(err.orig), self._parsed).strip().splitlines()
        reason = " ".join(first[0].split()) if first else type(err.orig).__name__
        return LedgerUnreachable(f"lost the connection to the ledger {self.shown}: {reason}")

    def transact(self, work: Callable[[Session], T], *, what: str = "a ledger write") -> T:
        """Run ``work`` in one transaction; after a lost connection, run it again in a new one.

        A dropped connection (a database restart, failover or idle reaper) rolls
        the transaction back, so ``work`` is run again from the start, after
        :data:`RECONNECT_DELAYS`. Inside another transaction it is not retried
        (the outer one decides).

        Raises
        ------
        LedgerUnreachable
            No connection could be made again within the delays; the message
            names the ledger, what was being done and the last reason.
        """
        outer = self._current.get()
        if outer is not None:
            return work(outer)
        for delay in (*RECONNECT_DELAYS, None):
            try:
                with self.session() as session:
                    return work(session)
            except LedgerUnreachable as err:
                if delay is None:
                    waited = sum(RECONNECT_DELAYS)
                    raise LedgerUnreachable(
                        f"{err} (still, after {len(RECONNECT_DELAYS)} reconnection attempts over "
                        f"{waited:.0f} s, during {what}); nothing of it was written"
                    ) from None
                log.warning("%s; trying again in %.2f s (%s)", err, delay, what)
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        self.engine.dispose()


_DISCONNECTED = (
    "terminating connection",
    "server closed the connection",
    "connection refused",
    "could not connect",
    "connection is closed",
    "connection to server",
    "the database system is starting up",
    "the database system is shutting down",
    "consuming input failed",
    "connection failed",
)


def _is_disconnect(err: DBAPIError) -> bool:
    """Whether ``err`` says the connection to the database is gone (not a refused statement)."""
    text = str(err.orig).lower()
    return err.connection_invalidated or any(marker in text for marker in _DISCONNECTED)


def _is_lock_timeout(err: OperationalError) -> bool:
    """Whether ``err`` is a write lock that was not granted in time (SQLite or PostgreSQL)."""
    text = str(err.orig).lower()
    return "database is locked" in text or "lock timeout" in text or "could not obtain lock" in text

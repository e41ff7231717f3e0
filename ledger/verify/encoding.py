"""Text that is not UTF-8: the row that holds it is named, not a crash.

FedCommons writes only UTF-8 text and PostgreSQL stores nothing else, but a
SQLite file edited by hand can hold any bytes in a text column, and SQLite's
driver then fails the whole query that reads them. When a check's query
fails so, :func:`undecodable_row` reads the ledger's text columns again as
bytes and names the first row that holds such a value.
"""

from __future__ import annotations

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import DBAPIError

from ledger.verify.result import LedgerTampered

__all__ = ["is_undecodable", "undecodable_row"]


def is_undecodable(err: DBAPIError) -> bool:
    """Whether ``err`` is SQLite's driver failing to read a text value as UTF-8."""
    return "Could not decode to UTF-8" in str(err.orig)


def undecodable_row(engine: Engine) -> LedgerTampered | None:
    """The first row (entries first, then each table by name) holding text that is not UTF-8."""
    inspector = inspect(engine)
    tables = sorted(inspector.get_table_names(), key=lambda t: (t != "ledger_entries", t))
    with engine.connect() as connection:
        for table in tables:
            keys = inspector.get_pk_constraint(table)["constrained_columns"] or ["rowid"]
            key_list = ", ".join(_quoted(k) for k in keys)
            for column in (c["name"] for c in inspector.get_columns(table)):
                rows = connection.exec_driver_sql(
                    f"SELECT {key_list}, CAST({_quoted(column)} AS BLOB) FROM {_quoted(table)} "
                    f"WHERE typeof({_quoted(column)}) = 'text' ORDER BY {key_list}"
                )
                for *key, raw in rows:
                    try:
                        bytes(raw).decode("utf-8")
                    except UnicodeDecodeError as err:
                        what = (
                            f"its {column} is not UTF-8 text (byte {err.start} of {len(raw)}), "
                            "which FedCommons never writes"
                        )
                        if table == "ledger_entries":  # LedgerTampered names the entry
                            return LedgerTampered(key[0], None, what)
                        where = ", ".join(f"{k} {v}" for k, v in zip(keys, key, strict=True))
                        return LedgerTampered(None, None, f"{table} row {where}: {what}")
    return None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'

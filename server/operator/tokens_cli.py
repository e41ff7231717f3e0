"""``fedcommons operator token ...``: named, expiring tokens for the read-only dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from common.output import OutputFormat, literal_console
from ledger import Ledger
from ledger.tokens import issue_token, list_tokens, parse_lifetime, revoke_token
from server.deploy import OperatorFiles

__all__ = ["app"]

app = typer.Typer(
    help="Tokens for 'fedcommons audit serve': issue, list, revoke.",
    no_args_is_help=True,
    add_completion=False,
)

FolderOption = Annotated[
    Path, typer.Option("--dir", help="The consortium folder ('operator init'): its ledger.")
]
LedgerOption = Annotated[
    str | None, typer.Option("--ledger", help="SQLAlchemy URL of the ledger (default: --dir's).")
]


def _ledger(folder: Path, url: str | None) -> Ledger:
    """The consortium's ledger, which must exist: a token is never the first thing in one."""
    return Ledger(url or OperatorFiles(folder.resolve()).deploy().ledger_url, create=False)


@app.command("issue")
def issue(
    name: Annotated[str, typer.Option("--name", help="Who or what the token is for.")],
    expires: Annotated[str, typer.Option("--expires", help="Lifetime: 30d, 12h, 90m.")] = "30d",
    folder: FolderOption = Path("."),
    ledger_url: LedgerOption = None,
) -> None:
    """Issue a token and print it once; only its SHA-256 is kept."""
    try:
        lifetime = parse_lifetime(expires)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--expires") from None
    ledger = _ledger(folder, ledger_url)
    try:
        with ledger.session() as session:
            token = issue_token(session, name, lifetime)
    finally:
        ledger.close()
    typer.echo(token)
    literal_console(stderr=True).print(
        f"token {name!r} issued, valid for {expires}: it is shown only now", highlight=False
    )


@app.command("list")
def list_(
    folder: FolderOption = Path("."),
    ledger_url: LedgerOption = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="text (for people) or json.")
    ] = OutputFormat.text,
) -> None:
    """Every token issued: name, issued, expires, status (never the token)."""
    ledger = _ledger(folder, ledger_url)
    try:
        with ledger.session() as session:
            tokens = list_tokens(session)
    finally:
        ledger.close()
    rows = [
        {
            "name": t.name,
            "created_at": t.created_at.isoformat(timespec="seconds"),
            "expires_at": t.expires_at.isoformat(timespec="seconds"),
            "status": t.status(),
        }
        for t in tokens
    ]
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Dashboard tokens")
    for column in ("name", "issued", "expires", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["created_at"], row["expires_at"], row["status"])
    literal_console().print(table)


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Option("--name", help="The token to revoke.")],
    folder: FolderOption = Path("."),
    ledger_url: LedgerOption = None,
) -> None:
    """Revoke a token now: every request carrying it gets 401 from then on."""
    ledger = _ledger(folder, ledger_url)
    try:
        with ledger.session() as session:
            revoke_token(session, name)
    finally:
        ledger.close()
    typer.echo(f"token {name!r} revoked")

"""``fedcommons operator suspend`` and ``reinstate``: keep a member out of later runs, or let it in.

Each is a ledger entry with its reason (:mod:`ledger.suspensions`). A run
started afterwards leaves a suspended member out of its participants and its
``run-members`` entry; a run not finished keeps the members it started with,
also when it is resumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from sqlalchemy import select

from common.output import OutputFormat, literal_console
from ledger import Ledger
from ledger.runs import RESUMABLE
from ledger.schema import Run
from ledger.suspensions import REINSTATED, SUSPENDED, reinstate, suspend
from server.deploy import OperatorFiles

__all__ = ["reinstate_member", "suspend_member"]

InstitutionOption = Annotated[
    str, typer.Option("--institution", help="The member, by the name it was admitted with.")
]
ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why, in words an auditor reads ('audit show').")
]
FolderOption = Annotated[
    Path, typer.Option("--dir", help="The consortium folder ('operator init'): its ledger.")
]
LedgerOption = Annotated[
    str | None, typer.Option("--ledger", help="SQLAlchemy URL of the ledger (default: --dir's).")
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="text (for people) or json.")]


def suspend_member(
    institution: InstitutionOption,
    reason: ReasonOption,
    folder: FolderOption = Path("."),
    ledger_url: LedgerOption = None,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Suspend a member: runs started from now on leave it out (an entry, with the reason).

    It is not a participant of those runs (its updates are refused) and not
    one of their witnesses. Runs not finished keep it, also when resumed.
    Exit 1 if the ledger holds no such institution or it is suspended already.
    """
    _decide(institution, reason, folder, ledger_url, output_format, SUSPENDED)


def reinstate_member(
    institution: InstitutionOption,
    reason: ReasonOption,
    folder: FolderOption = Path("."),
    ledger_url: LedgerOption = None,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Reinstate a suspended member: runs started from now on include it again (an entry).

    Exit 1 if the ledger holds no such institution or it is not suspended.
    """
    _decide(institution, reason, folder, ledger_url, output_format, REINSTATED)


def _decide(
    institution: str,
    reason: str,
    folder: Path,
    ledger_url: str | None,
    output_format: OutputFormat,
    action: str,
) -> None:
    if not reason.strip():
        raise typer.BadParameter("say why, in words an auditor reads", param_hint="--reason")
    ledger = Ledger(ledger_url or OperatorFiles(folder.resolve()).deploy().ledger_url, create=False)
    try:
        with ledger.session() as session:
            record = suspend if action == SUSPENDED else reinstate
            row = record(session, institution, reason)
            result: dict[str, Any] = {
                "institution": institution,
                "action": row.action,
                "reason": row.reason,
                "at": row.recorded_at.isoformat(timespec="seconds"),
                "entry_seq": row.entry_seq,
                "runs_keeping_members": [
                    {"run_id": run_id, "status": status}
                    for run_id, status in session.execute(
                        select(Run.id, Run.status).where(Run.status.in_(RESUMABLE)).order_by(Run.id)
                    )
                ],
            }
    finally:
        ledger.close()
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(result))
        return
    console = literal_console()
    change = "leave it out" if action == SUSPENDED else "include it again"
    console.print(
        Text.assemble(
            (result["action"], "yellow" if action == SUSPENDED else "green"),
            f" {institution} (ledger entry {result['entry_seq']}): {result['reason']}. "
            f"Runs started from now on {change}.",
        ),
        highlight=False,
    )
    if result["runs_keeping_members"]:
        runs = ", ".join(f"{r['run_id']} ({r['status']})" for r in result["runs_keeping_members"])
        console.print(
            f"Not finished, so they keep the members they started with (also if resumed): "
            f"run {runs}",
            highlight=False,
        )

"""``fedcommons audit card``: check a released model card against the consortium.

Exit codes: 0 every check ran and held (``verified``); 1 a check failed
(``refused``: each mismatch is named); 4 no check failed but some could not
be made (``incomplete``: without ``--ledger``, the witnesses, the quorum and
everything the ledger records); 2 a usage error. :func:`check_releases` runs
the same checks on every card under a folder (``audit verify --releases``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from sqlalchemy.orm import Session

from audit.cards import (
    EXIT_INCOMPLETE,
    EXIT_MISMATCH,
    CardError,
    CardVerdict,
    Check,
    check_card,
)
from common.consortium import Consortium
from common.output import OutputFormat, literal_console
from ledger import Ledger

__all__ = [
    "CheckedCard",
    "card",
    "check_card_file",
    "check_releases",
    "print_verdict",
    "verify_releases",
]

CARD_FILE = "model-card.json"
_MARK = {True: ("held", "green"), False: ("MISMATCH", "bold red"), None: ("not checked", "yellow")}


@dataclass(frozen=True)
class CheckedCard:
    """A card file and its verdict."""

    path: Path
    verdict: CardVerdict

    def to_dict(self) -> dict[str, Any]:
        return {"card": str(self.path), **self.verdict.to_dict()}


def check_card_file(path: Path, consortium: Consortium, session: Session | None) -> CheckedCard:
    """Read and check the card at ``path`` (a ``model-card.json`` or a release folder)."""
    if path.is_dir():
        path = path / CARD_FILE
    try:
        data = path.read_bytes()
        card = json.loads(data)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CardError(f"{path} is not a readable model card: {err}") from None
    if not isinstance(card, dict):
        raise CardError(f"{path} is not a model card (not a JSON object)")
    digest = hashlib.sha256(data).hexdigest()
    verdict = check_card(
        card,
        operator=consortium.operator_key,
        origin=consortium.origin,
        session=session,
        card_sha256=digest,
    )
    return CheckedCard(path, verdict)


def check_releases(folder: Path, consortium: Consortium, session: Session) -> list[CheckedCard]:
    """Every ``model-card.json`` under ``folder`` (searched recursively), checked."""
    cards = sorted(folder.rglob(CARD_FILE))
    if not cards:
        raise CardError(f"no {CARD_FILE} under {folder}")
    return [_checked_or_refused(path, consortium, session) for path in cards]


def _checked_or_refused(path: Path, consortium: Consortium, session: Session) -> CheckedCard:
    """One card of a folder: a card that cannot be read is refused, the others still checked."""
    try:
        return check_card_file(path, consortium, session)
    except CardError as err:
        return CheckedCard(path, CardVerdict((Check("card", False, str(err)),)))


def print_verdict(checked: CheckedCard) -> None:
    """Each check on one line (text from the card printed literally), then the verdict."""
    console = literal_console()
    verdict = checked.verdict
    head = Text.assemble((verdict.status.upper(), "bold"), f" {checked.path}")
    console.print(head, soft_wrap=True, highlight=False)
    for check in verdict.checks:
        label, style = _MARK[check.held]
        line = Text.assemble("  ", (label, style), f" {check.name}: {check.detail}")
        console.print(line, soft_wrap=True, highlight=False)


def card(
    path: Annotated[
        Path, typer.Argument(help="The card (model-card.json) or the release folder holding it.")
    ],
    operator_key: Annotated[
        Path,
        typer.Option(
            "--operator-key",
            help="consortium.json: the operator's key and the consortium's log origin.",
        ),
    ],
    ledger_url: Annotated[
        str | None,
        typer.Option(
            "--ledger",
            help="SQLAlchemy URL of the consortium's ledger (read-only): witness keys, quorum, "
            "release entry, obligations and ε are checked against it. Without it, they are "
            "not checked and the verdict is 'incomplete'.",
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="text (for people) or json.")
    ] = OutputFormat.text,
) -> None:
    """Check a model card against the consortium: operator signature, log origin, every
    round's proof and, with --ledger, witnesses, quorum, release, obligations and ε.

    Exit 0 verified (every check ran and held); 1 refused (each mismatch
    named); 4 incomplete (no mismatch, but checks left unmade without --ledger).
    """
    consortium = Consortium.load(operator_key)
    if ledger_url is None:
        checked = check_card_file(path, consortium, None)
    else:
        ledger = Ledger(ledger_url, read_only=True)
        try:
            with ledger.session() as session:
                checked = check_card_file(path, consortium, session)
        finally:
            ledger.close()
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(checked.to_dict(), indent=2))
    else:
        print_verdict(checked)
    status = checked.verdict.status
    if status != "verified":
        raise typer.Exit(code=EXIT_MISMATCH if status == "refused" else EXIT_INCOMPLETE)


def verify_releases(ledger_url: str, operator_key: str | None, folder: Path) -> list[CheckedCard]:
    """``audit verify --releases``: every card under ``folder`` checked against the ledger."""
    if operator_key is None or not Path(operator_key).is_file():
        raise typer.BadParameter(
            "--releases checks cards against the consortium: give its consortium.json "
            "(the operator's key and the log origin)",
            param_hint="--operator-key",
        )
    consortium = Consortium.load(Path(operator_key))
    ledger = Ledger(ledger_url, read_only=True)
    try:
        with ledger.session() as session:
            return check_releases(folder, consortium, session)
    finally:
        ledger.close()

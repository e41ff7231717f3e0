"""``fedcommons audit compare DIR...``: several nodes' evidence side by side.

Each node keeps what the operator showed it: receipts, refused receipts with
the head it held, and the log of every checkpoint it was shown or cosigned
(:mod:`common.evidence`). A node alone cannot see a split view (each fork is
consistent with itself); two nodes' folders together show it. No ledger is
needed: the operator's signatures are the proof.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.consortium import Consortium
from common.evidence import EXIT_EQUIVOCATION, Comparison, compare
from common.keys import decode_ed25519_public
from common.output import OutputFormat

__all__ = ["compare_folders", "operator_and_origin"]


def operator_and_origin(value: str) -> tuple[Ed25519PublicKey, str | None]:
    """The operator's key, and the log origin when ``value`` is the consortium's file."""
    path = Path(value)
    if path.suffix == ".json" or path.is_file():
        consortium = Consortium.load(path)
        return consortium.operator_key, consortium.origin
    return decode_ed25519_public(value, "--operator-key"), None


def compare_folders(
    folders: Annotated[
        list[Path],
        typer.Argument(
            help="Nodes' state folders (or their receipts folders), two or more.",
            show_default=False,
        ),
    ],
    operator_key: Annotated[
        str,
        typer.Option(
            help="The operator's key: the consortium.json that holds it (its log origin "
            "is then checked too), or base64."
        ),
    ],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="text (for people) or json.")
    ] = OutputFormat.text,
) -> None:
    """Compare what the operator signed for each node: name any equivocation.

    Reads every receipt, refused receipt and logged checkpoint in each folder, and
    lists each update a node sent without holding a receipt for it.
    Exit 0 when everything the operator signed is one ledger; exit 3, with both
    signed notes and their cosigners, when it signed two checkpoints of one size
    with different roots, or receipts placing different entries at one position.
    """
    if len(folders) < 2:
        raise typer.BadParameter("give two or more nodes' folders to compare")
    operator, origin = operator_and_origin(operator_key)
    result = compare(folders, operator, origin)
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(_doc(result)))
    else:
        _print(result)
    if result.equivocations:
        raise typer.Exit(code=EXIT_EQUIVOCATION)


def _doc(result: Comparison) -> dict[str, object]:
    return {
        "consistent": not result.equivocations,
        "folders": result.folders,
        "checkpoints": result.heads,
        "unsigned": result.unsigned,
        "unreceipted": result.unreceipted,
        "equivocations": [e.to_dict() for e in result.equivocations],
    }


def _print(result: Comparison) -> None:
    """Plain lines, never wrapped: a signed note is only evidence verbatim."""
    for line in result.unsigned:
        typer.echo(f"not signed by the operator (no evidence either way): {line}")
    for line in result.unreceipted:
        typer.echo(f"sent without a receipt: {line}")
    if not result.equivocations:
        typer.echo(
            f"consistent: {result.heads} operator-signed checkpoints in "
            f"{len(result.folders)} folders are one ledger"
        )
        return
    for equivocation in result.equivocations:
        first, *rest = equivocation.describe()
        typer.echo(typer.style("EQUIVOCATION", fg="red", bold=True) + f" {first}", err=True)
        for line in rest:
            typer.echo(line, err=True)

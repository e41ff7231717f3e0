"""Root of the ``fedcommons`` command."""

from __future__ import annotations

import logging

import typer

from common.cli import audit, client, demo, operator

__all__ = ["app", "main"]

app = typer.Typer(
    name="fedcommons",
    help="Federated learning for academia-industry data sharing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.add_typer(operator.app, name="operator")
app.add_typer(client.app, name="client")
app.add_typer(audit.app, name="audit")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()

"""Root of the ``fedcommons`` command: one sub-command group per user.

``demo`` (a whole consortium on this machine, :mod:`fedcommons.demo_cli`),
``operator ...`` (:mod:`server.operator.cli`), ``client ...`` (:mod:`client.cli`) and
``audit ...`` (:mod:`audit.cli`). Each group is imported only when it runs,
so ``fedcommons audit ...`` never loads the ML stack. The groups only raise;
the root turns an expected error into one line on stderr and a non-zero exit
(:mod:`fedcommons.errors`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click
import typer
from rich.text import Text
from typer.core import TyperGroup

from common.output import literal_console
from fedcommons.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    USER_ERRORS,
    mask_secrets,
    write_crash_log,
)

__all__ = ["GROUPS", "app", "main"]

GROUPS: dict[str, tuple[str, str]] = {
    "demo": ("fedcommons.demo_cli", "Run a whole consortium on this machine (real Flower)."),
    "simulate": (
        "fedcommons.simulate_cli",
        "Size a consortium: N virtual institutions on Flower's Simulation Engine.",
    ),
    "operator": ("server.operator.cli", "Commands for the consortium operator."),
    "client": ("client.cli", "Commands for a participating institution."),
    "audit": ("audit.cli", "Read-only views of the ledger, for auditors."),
}
"""Sub-command -> (module whose ``app`` it is, one line of help)."""


class _Root(TyperGroup):
    """Loads each group on demand and runs every command inside the error handling."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in GROUPS:
            return None
        module = importlib.import_module(GROUPS[cmd_name][0])
        command = typer.main.get_command(module.app)
        command.name = cmd_name
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in GROUPS.items()])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            _say(str(err))
            raise typer.Exit(code=EXIT_USER_ERROR) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            _say("interrupted")
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as shells do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(code=EXIT_BROKEN_PIPE) from None
        except Exception as err:
            log = write_crash_log(err, sys.argv[1:])
            _say(
                f"unexpected {type(err).__name__}: {err}. This is a bug in FedCommons; the "
                f"traceback is in {log} (please report it with that file)"
            )
            raise typer.Exit(code=EXIT_INTERNAL) from None


def _say(message: str) -> None:
    """One line on stderr, secrets masked."""
    literal_console(stderr=True).print(
        Text.assemble(("error:", "bold red"), f" {mask_secrets(message)}"),
        highlight=False,
        soft_wrap=True,
    )


app = typer.Typer(
    name="fedcommons",
    cls=_Root,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def root() -> None:
    """Federated learning for academia-industry data sharing."""


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()

"""Showing a run as it goes: a progress bar of rounds, then tables (Rich, for people)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.epsilon import format_epsilon
from server.operator.follow import RoundProgress

__all__ = ["round_bar", "rounds_table"]


@contextmanager
def round_bar(console: Console, total: int) -> Iterator[Callable[[RoundProgress], None]]:
    """A progress bar over ``total`` rounds; yields the callback that advances it."""
    progress = Progress(
        TextColumn("[bold blue]rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("rounds", total=total, status="starting Flower…")

        def on_round(r: RoundProgress) -> None:
            spent = max(r.epsilon.values(), default=0.0)
            progress.update(
                task,
                completed=r.round,
                status=f"accuracy {r.accuracy:.2%}  loss {r.loss:.3f}  "
                f"max ε {format_epsilon(spent)}  ({r.seconds:.1f}s)",
            )

        yield on_round


def rounds_table(rounds: list[RoundProgress]) -> Table:
    """The rounds as recorded, scored on the server's validation split."""
    table = Table(title="Rounds (server validation split)")
    for column in ("round", "accuracy", "loss", "participants", "seconds", "max ε"):
        table.add_column(column, justify="right")
    for r in rounds:
        table.add_row(
            str(r.round), f"{r.accuracy:.2%}", f"{r.loss:.4f}", str(r.participants),
            f"{r.seconds:.1f}", format_epsilon(max(r.epsilon.values(), default=0.0)),
        )  # fmt: skip
    return table

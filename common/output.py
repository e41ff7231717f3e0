"""How a command prints its result: for people, or as JSON for machines.

Every string printed for people is printed as itself: institution and
licence names, reasons, paths and tokens come from the ledger, a request or
a peer, and Rich would otherwise read ``[bold]x[/bold]`` in them as a style,
``[/]`` as a closing tag (an error), ``[link=...]`` as a hyperlink and
``:warning:`` as an emoji. So :func:`literal_console` interprets none of
these; a command styles its own words with :class:`rich.text.Text`, e.g.
``Text.assemble(("admitted", "green"), f" {name}")``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from rich.console import Console

__all__ = ["OutputFormat", "literal_console", "printer"]


class OutputFormat(str, Enum):
    """``--format``: ``text`` (tables and sentences for people) or ``json`` (for machines)."""

    text = "text"
    json = "json"


def literal_console(*, stderr: bool = False) -> Console:
    """A Rich console that prints every string literally: no markup, no emoji codes.

    Parameters
    ----------
    stderr : bool (default: False)
        Print on standard error instead of standard output.

    Returns
    -------
    Console
        Tables, styled :class:`rich.text.Text` and plain strings print as
        given; only Rich's highlighting colours numbers and the like.
    """
    return Console(stderr=stderr, markup=False, emoji=False)


def printer(console: Console) -> Callable[[str], None]:
    """A ``say(line)`` callback printing each line on ``console`` as it is: unhighlighted,
    and not wrapped by Rich (a long path stays whole to copy)."""

    def say(line: str) -> None:
        console.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)

    return say

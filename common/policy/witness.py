"""The policy's [witness] section: how many members must cosign a checkpoint.

A node treats a checkpoint of the ledger as established only once members of
the run cosigned it (:mod:`client.quorum`). The quorum is counted over the
members admitted to the run, recorded in the ledger when the run starts
(:mod:`common.quorum`), never over those that happen to take part in a round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from common.policy.spec import INT_OR_WORD, Section, spec

__all__ = ["QUORUM_WORDS", "WitnessConfig"]

QUORUM_WORDS = ("majority",)


def _quorum(v: Any) -> bool:
    return v in QUORUM_WORDS if isinstance(v, str) else 1 <= v <= 10_000


@dataclass(frozen=True)
class WitnessConfig(Section):
    """Who must vouch for the ledger before a node relies on it.

    Parameters
    ----------
    quorum : str or int (default: "majority")
        ``"majority"``: more than half of the members admitted to the run (the
        node itself counted); a number N: at least N of them. A number below
        a majority is refused when the run starts, and nodes never accept
        less than a majority whatever the policy says: two forks of the
        ledger cannot both reach it while a majority of members is honest.
    """

    SECTION: ClassVar[str] = "witness"
    quorum: str | int = field(
        default="majority",
        metadata=spec("quorum", INT_OR_WORD, _quorum, '"majority" or a whole number 1-10000'),
    )

"""Check 7: every contribution value, recomputed from its round's recorded utilities.

A round's :class:`~ledger.schema.Valuation` row keeps the players, the
utility of every coalition evaluated and, for GTG-Shapley, the sampled
permutations; each participant's value is a
:class:`~ledger.schema.Contribution` row. :func:`recompute` derives the values
again with the same integer maths the server used (:mod:`common.shapley`),
and :func:`check_valuations` compares them with what is recorded.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.shapley import recompute_values
from ledger.schema import Contribution, Valuation
from ledger.shapley import RoundValues
from ledger.verify.result import LedgerTampered

__all__ = ["check_valuations", "recompute", "round_values"]


def recompute(record: RoundValues) -> dict[str, int]:
    """Each player's value, recomputed from the recorded utilities (and permutations).

    Raises ``ValueError`` if the record names an unknown method, a
    coalition outside its players, or lacks a utility the method needs.
    """
    return recompute_values(
        record.method, record.players, record.utilities, record.permutations, record.truncation
    )


def round_values(row: Valuation) -> RoundValues:
    """A recorded valuation, parsed back (``ValueError`` if it is malformed)."""
    try:
        players = json.loads(row.players)
        doc = {
            "method": row.method,
            "players": players,
            "utilities": json.loads(row.utilities),
            "permutations": json.loads(row.permutations),
            "truncation": row.truncation,
            "values": {p: 0 for p in players},
        }
    except (ValueError, TypeError) as err:
        raise ValueError(f"a malformed valuation record: {err}") from None
    return RoundValues.from_doc(doc, row.seconds, row.utility)


def check_valuations(session: Session) -> int:
    """Recompute every recorded value from its valuation's utilities; return how many.

    Raises ``LedgerTampered`` (naming the entry) when a value, a utility or the
    recorded gain no longer agree.
    """
    recorded: dict[int, dict[str, tuple[int, int | None]]] = {}
    for c in session.scalars(select(Contribution).order_by(Contribution.id)):
        recorded.setdefault(c.valuation_id, {})[c.participant.name] = (c.value, c.entry_seq)
    checked = 0
    for row in session.scalars(select(Valuation).order_by(Valuation.id)):
        where = f"run {row.run_id} round {row.round_number}"
        try:
            parsed = round_values(row)
            values = recompute(parsed)
            gain = parsed.gain
        except (ValueError, KeyError) as err:
            raise LedgerTampered(row.entry_seq, "valuation", f"{where}: {err}") from None
        if gain != row.gain or len(parsed.utilities) != row.evaluations:
            raise LedgerTampered(
                row.entry_seq, "valuation", f"{where}: the recorded gain or count disagrees"
            )
        stated = recorded.get(row.id, {})
        if set(stated) != set(values):
            raise LedgerTampered(
                row.entry_seq,
                "valuation",
                f"{where}: values are recorded for {sorted(stated)}, not the valued "
                f"{sorted(values)}",
            )
        for name, (value, seq) in sorted(stated.items()):
            if value != values[name]:
                raise LedgerTampered(
                    seq,
                    "contribution",
                    f"{where}: {name}'s recorded value {value} is not the {values[name]} "
                    "recomputed from the recorded coalition utilities",
                )
        checked += len(values)
    return checked

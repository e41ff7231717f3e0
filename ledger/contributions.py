"""Contribution values in the ledger: each round's valuation and every participant's value.

A round's :class:`Valuation` row keeps what is needed to recompute its values
(method, players, the utility of every evaluated coalition and, for
GTG-Shapley, the sampled permutations); each participant's value is its own
:class:`Contribution` row, so a receipt can prove it. Values are integers
(parts per million of validation utility): no floats to disagree on. Both
are entries like every other fact, covered by the round's signed tree head;
``audit verify`` recomputes every value from the recorded utilities and
compares (:mod:`ledger.verify.valuations`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.canonical import canonical_json
from ledger.entries import record_row
from ledger.facts import SUSPECTED
from ledger.schema import Contribution, Defence, Participant, Run, Valuation
from ledger.shapley import RoundValues
from ledger.store import LedgerError

__all__ = [
    "contributions_report",
    "record_valuation",
]


def _text(value: Any) -> str:
    return canonical_json(value).decode("ascii")


def record_valuation(
    session: Session, run_id: int, round_number: int, values: RoundValues
) -> dict[str, int]:
    """Record a round's valuation and each participant's value; their entries' seqs by name."""
    doc = values.to_doc()
    row = Valuation(
        run_id=run_id,
        round_number=round_number,
        method=values.method,
        utility=values.utility,
        players=_text(doc["players"]),
        utilities=_text(doc["utilities"]),
        permutations=_text(doc["permutations"]),
        truncation=values.truncation,
        evaluations=values.evaluations,
        gain=values.gain,
        seconds=float(values.seconds),
    )
    record_row(session, row, "valuation")
    seqs = {}
    for name in values.players:
        participant = session.scalar(select(Participant).where(Participant.name == name))
        if participant is None:
            raise LedgerError(f"a contribution value for {name!r}, who is not enrolled")
        contribution = Contribution(
            run_id=run_id,
            round_number=round_number,
            valuation_id=row.id,
            participant_id=participant.id,
            value=values.values[name],
        )
        seqs[name] = record_row(session, contribution, "contribution")
    return seqs


def contributions_report(
    session: Session, kinds: Mapping[str, str] | None = None, run_id: int | None = None
) -> list[dict[str, Any]]:
    """Each run's values by round, and cumulative values and shares by institution and kind.

    A share is an institution's positive cumulative value over the sum of all
    positive ones (a harmful participant, with a negative value, has share 0).
    Beside each institution's value is the collusion evidence recorded against
    it in the run (``evidence``: kind -> rounds), so no value is read without it.
    """
    if kinds is None:
        kinds = {p.name: p.kind for p in session.scalars(select(Participant))}
    query = select(Run).order_by(Run.id)
    if run_id is not None:
        query = query.where(Run.id == run_id)
    runs = []
    for run in session.scalars(query):
        rows = session.scalars(
            select(Valuation).where(Valuation.run_id == run.id).order_by(Valuation.id)
        ).all()
        values = session.scalars(
            select(Contribution).where(Contribution.run_id == run.id).order_by(Contribution.id)
        ).all()
        by_round: dict[int, dict[str, int]] = {}
        for c in values:
            by_round.setdefault(c.valuation_id, {})[c.participant.name] = c.value
        total: dict[str, int] = {}
        for c in values:
            total[c.participant.name] = total.get(c.participant.name, 0) + c.value
        evidence = _evidence(session, run.id)
        runs.append(
            {
                "run": run.id,
                "rounds": [
                    {
                        "round": v.round_number,
                        "method": v.method,
                        "utility": v.utility,
                        "evaluations": v.evaluations,
                        "gain_ppm": v.gain,
                        "seconds": v.seconds,
                        "values_ppm": dict(sorted(by_round.get(v.id, {}).items())),
                    }
                    for v in rows
                ],
                "institutions": [
                    {**share, "evidence": evidence.get(share["name"], {})}
                    for share in _shares(total, kinds)
                ],
                "kinds": _shares(_by_kind(total, kinds), None),
            }
        )
    return runs


def _evidence(session: Session, run_id: int) -> dict[str, dict[str, list[int]]]:
    """The run's collusion evidence by institution: each kind, and the rounds it was seen in."""
    rows = session.scalars(
        select(Defence)
        .where(Defence.run_id == run_id, Defence.action == SUSPECTED)
        .order_by(Defence.id)
    )
    out: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        rounds = out.setdefault(row.participant.name, {}).setdefault(row.rule, [])
        if row.round_number not in rounds:
            rounds.append(row.round_number)
    return out


def _by_kind(total: Mapping[str, int], kinds: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in total.items():
        kind = kinds.get(name, "unknown")
        out[kind] = out.get(kind, 0) + value
    return out


def _shares(total: Mapping[str, int], kinds: Mapping[str, str] | None) -> list[dict[str, Any]]:
    positive = sum(max(v, 0) for v in total.values())
    return [
        {
            "name": name,
            **({"kind": kinds.get(name, "unknown")} if kinds is not None else {}),
            "value_ppm": value,
            "share": round(max(value, 0) / positive, 6) if positive else None,
        }
        for name, value in sorted(total.items(), key=lambda item: (-item[1], item[0]))
    ]

"""What valuing contributions costs, and how close GTG-Shapley comes to exact Shapley values.

For 3, 5, 10 and 20 institutions on the digits federation with DP (the
demo's policy and split, in this process: ``tests/support/hostile_federation.py``,
the ClientApp's training and the ServerApp's strategy -- a shortcut checked
against ``fedcommons simulate`` by ``tests/fedcommons/test_simulation.py``, kept because
it hands each round's updates to the valuer directly), each round is run,
then valued as the policy's default does (exact Shapley up to 10
institutions, GTG-Shapley above; the CNN's coalition models scored many at
once, as the ServerApp does), timed beside the round itself. Up to 10
institutions, GTG-Shapley (default and a cheaper ``--cheap-convergence``) is
also run on the same round and compared with the exact values (Pearson).

Usage::

    python bench/contributions.py
    python bench/contributions.py --institutions 10 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import write_record  # noqa: E402  (bench/record.py)

from common.policy import Policy  # noqa: E402
from ledger.shapley import RoundValues, exact_values  # noqa: E402
from server.app.valuation import CoalitionUtility, Valuer  # noqa: E402
from server.app.valuation.batched import batch_evaluator  # noqa: E402
from tests.support.hostile_federation import HostileFederation  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "contributions.json"


def _gtg(
    federation: HostileFederation, valuer: Valuer, convergence: float, server_round: int
) -> RoundValues:
    """GTG-Shapley on the round just run, as the ServerApp would with ``convergence``."""
    config = replace(valuer.config, method="gtg", convergence=convergence)
    strategy = federation.strategy
    record = replace(valuer, config=config).value(
        server_round, strategy.round_start, strategy.round_updates(), strategy.evaluator
    )
    assert record is not None
    return record


def run_size(policy: Policy, count: int, cheap: float, workdir: Path) -> list[dict[str, Any]]:
    """Every round of one federation of ``count`` institutions, valued and compared."""
    kinds = ("academia", "industry")
    institutions = [(f"inst{i:02d}", kinds[i % 2]) for i in range(count)]
    federation = HostileFederation(policy, workdir, institutions)
    batch = batch_evaluator(federation.model, federation.validation)  # as the ServerApp does
    valuer = Valuer(policy.valuation, policy.federation.seed, batch)
    rows = []
    for server_round in range(1, policy.federation.rounds + 1):
        started = time.perf_counter()
        federation.round(server_round)
        round_seconds = time.perf_counter() - started
        strategy = federation.strategy
        updates, start = strategy.round_updates(), strategy.round_start
        default = valuer.value(server_round, start, updates, strategy.evaluator)
        assert default is not None
        row: dict[str, Any] = {
            "institutions": count,
            "round": server_round,
            "round_seconds": round_seconds,
            "method": default.method,
            "evaluations": default.evaluations,
            "valuation_seconds": default.seconds,
            "share_of_round": default.seconds / (round_seconds + default.seconds),
            "gain_ppm": default.gain,
        }
        if count <= 10:
            game = CoalitionUtility(start, updates, strategy.evaluator)
            exact = exact_values(count, game) if default.method != "shapley" else None
            truth = exact or [default.values[p] for p in game.players]
            for name, convergence in (("gtg", policy.valuation.convergence), ("cheap", cheap)):
                record = _gtg(federation, valuer, convergence, server_round)
                seconds = record.seconds
                estimate = [record.values[p] for p in game.players]
                spread = float(np.std(truth)) > 0 and float(np.std(estimate)) > 0
                row[f"{name}_evaluations"] = record.evaluations
                row[f"{name}_seconds"] = seconds
                row[f"{name}_pearson"] = (
                    float(np.corrcoef(truth, estimate)[0, 1]) if spread else None
                )
            row["exact_evaluations"] = 2**count
        rows.append(row)
        print(
            f"  n={count} round {server_round}: round {round_seconds:.1f}s, "
            f"{default.method} {default.evaluations} evals {default.seconds:.2f}s"
            + (
                f", gtg r={row['gtg_pearson']} ({row['gtg_evaluations']} evals), "
                f"cheap r={row['cheap_pearson']} ({row['cheap_evaluations']} evals)"
                if count <= 10
                else ""
            ),
            flush=True,
        )
    return rows


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--institutions", type=int, action="append")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cheap-convergence", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    policy = Policy().with_overrides({"federation.rounds": args.rounds})
    rows: list[dict[str, Any]] = []
    for count in args.institutions or [3, 5, 10, 20]:
        with tempfile.TemporaryDirectory() as tmp:
            rows += run_size(policy, count, args.cheap_convergence, Path(tmp))
    table = Table(title=f"Valuation per round ({args.rounds} rounds, digits, DP)")
    for column in (
        "n", "method", "evals", "valuation s", "round s", "share",
        "GTG r (min)", "GTG evals", "cheap r (min)", "cheap evals",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for count in sorted({r["institutions"] for r in rows}):
        mine = [r for r in rows if r["institutions"] == count]

        def show(key: str, fmt: str, rows: list[dict[str, Any]] = mine) -> str:
            value = _mean(rows, key)
            return "-" if value is None else format(value, fmt)

        def worst(key: str, rows: list[dict[str, Any]] = mine) -> str:
            values = [r[key] for r in rows if r.get(key) is not None]
            return f"{min(values):.3f}" if values else "-"

        table.add_row(
            str(count), mine[0]["method"], show("evaluations", ".0f"),
            show("valuation_seconds", ".2f"), show("round_seconds", ".1f"),
            show("share_of_round", ".1%"), worst("gtg_pearson"), show("gtg_evaluations", ".0f"),
            worst("cheap_pearson"), show("cheap_evaluations", ".0f"),
        )  # fmt: skip
    Console().print(table)
    write_record(args.out, policy=policy.to_sections(), rows=rows)


if __name__ == "__main__":
    main()

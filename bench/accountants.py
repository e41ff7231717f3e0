"""The noise each accountant derives for a budget, and each one's epsilon for the same noise.

For the demo's CNN node (university-a: 331 records, batch 256 so q = 1/2,
4 local epochs x 8 rounds = 64 Poisson steps, delta = 1e-5) and the BERT
demo's (362 texts, full batch 512 so q = 1, 4 epochs x 8 rounds), it derives the noise
multiplier for epsilon = 8 and 3 with FedCommons' planner
(``common.dp.plan_round``) under RDP and PRV, then states the epsilon of each
noise by Opacus's RDP and PRV accountants and, independently, by Google's
``dp-accounting`` PLD accountant (``pip install dp-accounting``; used here
only, never by the product).

Usage::

    python bench/accountants.py
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import write_record  # noqa: E402

from common.dp import epsilon_of, plan_round  # noqa: E402
from common.policy import PrivacyConfig, TrainingConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "accountants.json"
DELTA = 1e-5
# (name, records, batch size, local epochs, rounds)
NODES = [("cnn demo node", 331, 256, 4, 8), ("bert demo node", 362, 512, 4, 8)]


def pld_epsilon(sigma: float, q: float, steps: int) -> float:
    """Epsilon by dp-accounting's PLD accountant: Poisson-subsampled Gaussian, composed."""
    import dp_accounting

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(event)
    return float(accountant.get_epsilon(DELTA))


def main() -> None:
    rows: list[dict[str, Any]] = []
    for name, records, batch, epochs, rounds in NODES:
        training = TrainingConfig(local_epochs=epochs, batch_size=batch)
        for budget in (8.0, 3.0):
            for accountant in ("rdp", "prv"):
                started = time.perf_counter()
                plan = plan_round(
                    PrivacyConfig(epsilon=budget, accountant=accountant),
                    training,
                    num_records=records,
                    rounds_left=rounds,
                )
                seconds = time.perf_counter() - started
                q, steps = plan.sample_rate, plan.steps * rounds
                history = [(plan.noise_multiplier, q, steps)]
                row = {
                    "node": name,
                    "budget": budget,
                    "derived_with": accountant,
                    "sigma": plan.noise_multiplier,
                    "q": q,
                    "steps": steps,
                    "derive_seconds": seconds,
                    "eps_rdp": epsilon_of(history, DELTA, "rdp"),
                    "eps_prv": epsilon_of(history, DELTA, "prv"),
                    "eps_pld": pld_epsilon(plan.noise_multiplier, q, steps),
                }
                rows.append(row)
                print(
                    f"{name:15s} eps={budget:g} derived with {accountant}: sigma "
                    f"{row['sigma']:.4f} (q {q:.4f}, {steps} steps, {seconds:.1f} s) -> eps RDP "
                    f"{row['eps_rdp']:.3f}  PRV {row['eps_prv']:.3f}  PLD {row['eps_pld']:.3f}",
                    flush=True,
                )
    for name, *_ in NODES:
        for budget in (8.0, 3.0):
            rdp, prv = (
                next(r for r in rows if (r["node"], r["budget"], r["derived_with"]) == key)
                for key in ((name, budget, "rdp"), (name, budget, "prv"))
            )
            print(f"{name} eps={budget:g}: PRV noise / RDP noise = "
                  f"{prv['sigma'] / rdp['sigma']:.3f}")  # fmt: skip
    assert all(math.isfinite(r["eps_pld"]) for r in rows)
    write_record(RESULTS, delta=DELTA, rows=rows)


if __name__ == "__main__":
    main()

"""Round time before and after warm ClientApps and the encoder cache, on the real demo.

Runs ``fedcommons demo`` (the library call behind it: real SuperLink, three
SuperNodes, TLS, sealed updates, DP, the ledger) twice with the same policy:

- before: ``--isolation subprocess`` (Flower starts every ClientApp afresh)
  and, for BERT, no encoder cache (every step runs the whole model);
- after: the defaults, warm ClientApps and the encoder cache;
- baseline (``--only baseline``, run from a checkout of the commit before
  them): that code's defaults.

Per round it reads the ledger: wall (``rounds.seconds``), the slowest
client's compute (``round_updates.train_seconds``) and the overhead (wall -
compute), and reports the demo's wall time and test accuracy.

Usage::

    python bench/warm_rounds.py                  # the CNN demo
    python bench/warm_rounds.py --model bert     # the BERT demo
    python bench/warm_rounds.py --only after     # one variant
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from record import write_record  # noqa: E402

from common.policy import Policy  # noqa: E402
from fedcommons.demo import run_demo  # noqa: E402
from fedcommons.demo_setup import with_model  # noqa: E402
from ledger import Ledger  # noqa: E402
from ledger.report import ledger_report  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    # the code before warm ClientApps and the caches: run this script from a
    # checkout of that commit (bench/warm_rounds.py copied in), see BENCHMARKS.md
    "baseline": {},
    "before": {"isolation": "subprocess", "encoder_cache": False},
    "after": {"isolation": "warm", "encoder_cache": True},
}


def run_variant(workdir: Path, policy: Policy, **options: Any) -> dict[str, Any]:
    started = time.monotonic()
    summary = run_demo(workdir, policy, status_interval=10.0, **options)
    wall = time.monotonic() - started
    ledger = Ledger(summary["ledger_url"])
    try:
        with ledger.session() as session:
            (run,) = [r for r in ledger_report(session)["runs"]
                      if r["id"] == summary["ledger_run_id"]]  # fmt: skip
    finally:
        ledger.close()
    rounds = [
        {
            "round": r["round"],
            "wall": r["seconds"],
            "compute": max(u["train_seconds"] for u in r["updates"]),
        }
        for r in run["rounds"]
    ]
    for r in rounds:
        r["overhead"] = r["wall"] - r["compute"]
    return {
        "options": options,
        "demo_wall_seconds": wall,
        "test_accuracy": summary["final_accuracy"],
        "rounds": rounds,
        "mean_wall": fmean(r["wall"] for r in rounds),
        "mean_compute": fmean(r["compute"] for r in rounds),
        "mean_overhead": fmean(r["overhead"] for r in rounds),
        "mean_overhead_rounds_2_to_n": fmean(r["overhead"] for r in rounds[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["cnn", "bert"], default="cnn")
    parser.add_argument("--only", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    policy = with_model(Policy(), args.model)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="warm-rounds-") as tmp:
        for name in args.only or ["before", "after"]:
            print(f"{name}: {VARIANTS[name]} ...", flush=True)
            result = run_variant(Path(tmp) / name, policy, **VARIANTS[name])
            results[name] = result
            print(
                f"{name}: demo wall {result['demo_wall_seconds']:.1f} s, test accuracy "
                f"{result['test_accuracy']:.4f}; mean per round: wall {result['mean_wall']:.1f} s, "
                f"compute {result['mean_compute']:.1f} s, overhead {result['mean_overhead']:.1f} s "
                f"(rounds 2..n {result['mean_overhead_rounds_2_to_n']:.1f} s)",
                flush=True,
            )
    if len(results) == 2:
        for key in ("demo_wall_seconds", "mean_wall", "mean_overhead"):
            print(f"after / before, {key}: {results['after'][key] / results['before'][key]:.3f}")
    out = args.out or ROOT / "bench" / "results" / f"warm_rounds_{args.model}.json"
    write_record(out, model=args.model, variants=results)


if __name__ == "__main__":
    main()

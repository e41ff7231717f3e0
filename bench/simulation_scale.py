"""How ``fedcommons simulate`` scales: N virtual institutions, where the time and memory go.

For each N it runs the library call behind ``fedcommons simulate`` (Flower's
SuperLink in simulation mode, Ray, the product's ServerApp and ClientApp,
sealed updates, DP, the ledger, every receipt verified) and reports:

- wall time, and its parts: preparing the consortium (data, keys, enrolment,
  admission), round 1 (which includes starting Ray and its workers), the
  later rounds (rounds per minute) and the release and verification after;
- per round, the ServerApp's own phases (its log's "server phases" line):
  waiting for replies, intake (verify, open, check), defences and
  aggregation, evaluation, contribution valuation, the ledger;
- per institution, from the ledger: the ClientApp's handler time (load data
  and accountant, train with DP, seal) and its sealing alone, the server's
  opening; and what is left of the wait for replies once the handlers'
  time is divided among Ray's concurrent workers (dispatch and ClientApp
  start);
- peak memory: the sum of the resident sets of every process the
  simulation started (SuperLink, the simulation process with the ServerApp,
  Ray's daemons and workers), sampled at every poll; memory per virtual
  institution is the slope of that peak over N.

Usage::

    python bench/simulation_scale.py                       # N = 10, 50, 100
    python bench/simulation_scale.py --institutions 200 --partition iid
    python bench/simulation_scale.py --valuation none      # without contribution values
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from record import write_record  # noqa: E402

from common.policy import Policy  # noqa: E402
from fedcommons.simulation import SimulatedFederation, run_simulation  # noqa: E402
from ledger import Ledger  # noqa: E402
from ledger.report import ledger_report  # noqa: E402

PHASES = re.compile(r"round (\d+) server phases: (.*)")
PHASE = re.compile(r"([a-z ,()]+?) (\d+\.\d+) s")
PAGE = 4096


def _rss_bytes(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * PAGE


class MemoryWatch:
    """Peak of the summed resident sets of every process the simulation started."""

    def __init__(self) -> None:
        self.peak = 0

    def __call__(self, federation: SimulatedFederation) -> None:
        live = federation.tree.look()
        self.peak = max(self.peak, sum(_rss_bytes(pid) for pid in live))


def server_phases(run_log: str) -> dict[int, dict[str, float]]:
    """Round -> the ServerApp's phase seconds, from its log."""
    phases: dict[int, dict[str, float]] = {}
    for match in PHASES.finditer(run_log):
        phases[int(match.group(1))] = {
            name.strip(" ,"): float(seconds) for name, seconds in PHASE.findall(match.group(2))
        }
    return phases


def run_one(workdir: Path, policy: Policy, institutions: int, client_cpus: int) -> dict[str, Any]:
    watch = MemoryWatch()
    url = f"sqlite:///{workdir.resolve() / 'ledger.db'}"
    started = time.monotonic()
    summary = run_simulation(
        workdir,
        policy,
        institutions=institutions,
        client_cpus=client_cpus,
        ledger_url=url,
        watch=watch,
    )
    wall = time.monotonic() - started
    ledger = Ledger(url)
    try:
        with ledger.session() as session:
            (run,) = [r for r in ledger_report(session)["runs"]
                      if r["id"] == summary["ledger_run_id"]]  # fmt: skip
    finally:
        ledger.close()
    phases = server_phases(Path(summary["run_log"]).read_text(errors="replace"))
    rounds = summary["rounds"]
    later = [r["seconds"] for r in rounds[1:]]
    updates = [u for r in run["rounds"] for u in r["updates"]]
    concurrency = max(1, 2 // client_cpus)  # Ray's CPUs (this machine's 2) per ClientApp
    per_round = []
    for r in run["rounds"]:
        handlers = sum(u["train_seconds"] for u in r["updates"])
        wait = phases.get(r["round"], {}).get("waiting for replies", float("nan"))
        per_round.append(
            {
                "round": r["round"],
                "seconds": r["seconds"],
                "phases": phases.get(r["round"], {}),
                "client_handler_seconds_sum": handlers,
                "dispatch_and_start_per_institution": (wait * concurrency - handlers)
                / max(len(r["updates"]), 1),
            }
        )
    rounds_after = sum(r["seconds"] for r in rounds)
    return {
        "institutions": institutions,
        "rounds": len(rounds),
        "test_accuracy": summary["final_accuracy"],
        "wall_seconds": wall,
        "prepare_seconds": summary["prepare_seconds"],
        "round_1_seconds": rounds[0]["seconds"],
        "later_round_seconds": fmean(later) if later else None,
        "rounds_per_minute_after_round_1": 60.0 / fmean(later) if later else None,
        "after_rounds_seconds": wall - summary["prepare_seconds"] - rounds_after,
        "per_round": per_round,
        "mean_phases_after_round_1": {
            name: fmean(p["phases"].get(name, 0.0) for p in per_round[1:])
            for name in (per_round[-1]["phases"] if per_round[1:] else {})
        },
        "client_handler_seconds_mean": fmean(u["train_seconds"] for u in updates),
        "seal_seconds_mean": fmean(u["seal_seconds"] or 0.0 for u in updates),
        "open_seconds_mean": fmean(u["open_seconds"] or 0.0 for u in updates),
        "dispatch_and_start_per_institution_mean": fmean(
            p["dispatch_and_start_per_institution"] for p in per_round[1:] or per_round
        ),
        "peak_rss_mib": watch.peak / 2**20,
        "ledger_entries": summary["ledger_entries"],
        "receipts": summary["receipts"],
        "valuation": summary["valuation"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--institutions", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partition", choices=["iid", "non-iid"], default="iid")
    parser.add_argument("--valuation", choices=["shapley", "gtg", "loo", "none"], default=None)
    parser.add_argument("--client-cpus", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    policy = Policy().with_overrides(
        {
            "federation.rounds": args.rounds,
            "data.partition": args.partition,
            "valuation.method": args.valuation,
        }
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="simulation-scale-") as tmp:
        for n in args.institutions:
            print(f"N = {n} ...", flush=True)
            result = run_one(Path(tmp) / f"n{n}", policy, n, args.client_cpus)
            results.append(result)
            phases = {k: round(v, 2) for k, v in result["mean_phases_after_round_1"].items()}
            print(
                f"N = {n}: wall {result['wall_seconds']:.1f} s (prepare "
                f"{result['prepare_seconds']:.1f} s, round 1 {result['round_1_seconds']:.1f} s, "
                f"later rounds {result['later_round_seconds'] or 0:.1f} s each), test accuracy "
                f"{result['test_accuracy']:.4f}, peak RSS {result['peak_rss_mib']:.0f} MiB; "
                f"phases {phases}; "
                f"per institution: handler {result['client_handler_seconds_mean']:.3f} s, seal "
                f"{result['seal_seconds_mean'] * 1e3:.1f} ms, open "
                f"{result['open_seconds_mean'] * 1e3:.1f} ms, dispatch and start "
                f"{result['dispatch_and_start_per_institution_mean']:.3f} s",
                flush=True,
            )
    slope = None
    if len(results) >= 2:
        ns = np.array([r["institutions"] for r in results], dtype=float)
        peaks = np.array([r["peak_rss_mib"] for r in results])
        slope, intercept = np.polyfit(ns, peaks, 1)
        print(f"peak memory ~ {intercept:.0f} MiB + {slope:.2f} MiB per virtual institution")
    out = args.out or ROOT / "bench" / "results" / "simulation_scale.json"
    write_record(
        out,
        partition=args.partition,
        valuation=policy.valuation.method,
        client_cpus=args.client_cpus,
        mib_per_institution=slope,
        results=results,
    )


if __name__ == "__main__":
    main()

"""Share of the demo's round wall time spent on the update envelope.

Runs the embedded demo (``fedcommons.demo.run_demo``: real SuperLink with TLS
and SuperNode authentication, three SuperNodes, sealed updates) and reads
from its ledger, per round, the round's wall time, every client's sealing
time (serialise + encrypt + sign, measured in the ClientApp) and the
server's opening time (verify + decrypt + tensor checks, measured in the
ServerApp). The share adds all of them as if nothing overlapped, so it is
an upper bound.

Usage::

    python bench/crypto_share.py [--model cnn|bert] [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import write_record  # noqa: E402  (bench/record.py)

from common.policy import Policy  # noqa: E402
from fedcommons.demo import run_demo  # noqa: E402
from fedcommons.demo_setup import with_model  # noqa: E402
from ledger import Ledger  # noqa: E402
from ledger.report import ledger_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("cnn", "bert"), default="cnn")
    parser.add_argument("--rounds", type=int, default=None, help="default: the policy's")
    args = parser.parse_args()
    policy = with_model(Policy(), args.model).with_overrides({"federation.rounds": args.rounds})
    with tempfile.TemporaryDirectory() as folder:
        summary = run_demo(Path(folder), policy)
        ledger = Ledger(summary["ledger_url"], migrate=False)
        with ledger.session() as session:
            (run,) = ledger_report(session)["runs"]
        ledger.close()
    rows = []
    for r in run["rounds"]:
        seal = sum(u["seal_seconds"] for u in r["updates"])
        opened = sum(u["open_seconds"] for u in r["updates"])
        rows.append(
            {
                "round": r["round"],
                "round_seconds": r["seconds"],
                "seal_seconds": seal,
                "open_seconds": opened,
                "share": (seal + opened) / r["seconds"],
            }
        )
        print(f"round {r['round']}: {r['seconds']:6.2f} s, seal {seal * 1e3:7.2f} ms, "
              f"open {opened * 1e3:7.2f} ms, share {rows[-1]['share']:.5f}")  # fmt: skip
    total = sum(r["round_seconds"] for r in rows)
    crypto = sum(r["seal_seconds"] + r["open_seconds"] for r in rows)
    print(f"{args.model}: crypto {crypto:.3f} s of {total:.1f} s of rounds = {crypto / total:.5f}; "
          f"update {summary['update_bytes']:,.0f} B; "
          f"test accuracy {summary['final_accuracy']:.3f}")  # fmt: skip
    write_record(
        ROOT / "bench" / "results" / f"crypto_share_{args.model}.json",
        model=args.model,
        update_bytes=summary["update_bytes"],
        rounds=rows,
        crypto_seconds=crypto,
        round_seconds=total,
        share=crypto / total,
        final_accuracy=summary["final_accuracy"],
        tls=summary["tls"],
        node_auth=summary["node_auth"],
    )


if __name__ == "__main__":
    main()

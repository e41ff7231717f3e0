"""What the witness quorum costs: confirmation delay in messages, added time per round (issue 31).

Three parts, in one process:

(a) delay   -- a ledger of three members and ``--rounds`` rounds (the
               tests' receipt world: real keys, a real SQLite ledger), driven
               message by message as the ServerApp drives it: round r's
               receipt rides on round r + 1's train message, with the
               cosignatures the server kept on the checkpoint each node last
               cosigned (``ledger.cosignatures.cosigned_by``); after the last
               round, one query with its receipts and the final query with
               the cosignatures on them. Each node accepts, cosigns and counts
               through its own code (``client.receipts.accept_receipts``,
               ``client.witnessing.take_witnesses``). Printed: for each
               round's receipt, the message it arrived with and the message
               that established it.
(b) cost    -- the quorum's work per round, median of ``--repeats`` calls:
               the server's ``cosigned_by`` once per node (sequential), one
               node's ``take_witnesses`` (nodes count in parallel) and its
               members check on a receipt (``client.quorum.member_problem``).
(c) baseline -- one CNN demo (``fedcommons.demo.run_demo``, ``--demo-rounds``
               rounds, real Flower processes): the mean wall time of a round
               from the ledger, and the final query's time from the run log
               (``witness quorum (X s)``), a cost per run, not per round.

Usage::

    python bench/quorum.py [--rounds 5] [--repeats 200] [--demo-rounds 3] [--no-demo]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from flwr.app import ConfigRecord  # noqa: E402
from record import write_record  # noqa: E402

from client.enrolment import ParticipantState  # noqa: E402
from client.quorum import established_size, member_problem  # noqa: E402
from client.receipts import accept_receipts, receipt_book  # noqa: E402
from client.witnessing import take_witnesses  # noqa: E402
from common.policy import Policy  # noqa: E402
from common.witness import Witnessed, witnessed_record  # noqa: E402
from ledger.cosignatures import cosigned_by, record_cosignatures  # noqa: E402
from tests.support.receipt_world import (  # noqa: E402
    THREE,
    World,
    make_world,
    node_state,
    record_world_round,
)

RESULT = ROOT / "bench" / "results" / "quorum.json"


def _witnesses(world: World, name: str, final: bool = False) -> ConfigRecord | None:
    with world.ledger.session() as s:
        found = cosigned_by(s, name)
    if found is None:
        return witnessed_record(Witnessed(0, "", (), final)) if final else None
    head, lines = found
    return witnessed_record(Witnessed(head.tree_size, head.root, tuple(lines), final))


def _message(
    world: World, states: dict[str, ParticipantState], receipts: int | None, final: bool
) -> None:
    """One message to every node: the receipt of round ``receipts`` and/or the witnesses."""
    records = {name: _witnesses(world, name, final) for name in THREE}  # before any reply
    for name in THREE:
        if receipts is not None:
            record = ConfigRecord({"receipts": [world.receipts[(name, receipts)].to_json()]})
            accepted = accept_receipts(states[name], name, record)
            with world.ledger.session() as s:
                record_cosignatures(s, name, accepted.cosignatures)
        if records[name] is not None and (receipts is None or not final):
            take_witnesses(states[name], name, records[name], world.flower_run_id)


def delay(folder: Path, rounds: int) -> tuple[list[dict[str, Any]], World, dict[str, Any]]:
    """Drive ``rounds`` rounds; per receipt, the message it arrived with and was established by."""
    world = make_world(f"sqlite:///{folder / 'ledger.db'}", folder, names=THREE)
    for number in range(3, rounds + 1):
        record_world_round(world, number)
    states = {name: node_state(folder, name) for name in THREE}
    sizes = {r: world.receipts[("uni-a", r)].tree_head.tree_size for r in range(1, rounds + 1)}
    messages: list[tuple[str, int | None, bool]] = [
        (f"train message of round {m}", m - 1, False) for m in range(2, rounds + 1)
    ]
    messages += [("query with the last receipts", rounds, False), ("final query", None, True)]
    arrived: dict[int, str] = {}
    established: dict[int, str] = {}
    for label, receipt_round, final in messages:
        _message(world, states, receipt_round, final)
        if receipt_round is not None:
            arrived[receipt_round] = label
        held = min(established_size(receipt_book(states[n]).folder) for n in THREE)
        for r, size in sizes.items():
            if size <= held and r not in established:
                established[r] = label
    rows = [
        {"round": r, "arrives_with": arrived[r], "established_with": established.get(r)}
        for r in range(1, rounds + 1)
    ]
    return rows, world, states


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def cost(world: World, states: dict[str, Any], repeats: int) -> dict[str, float]:
    """Milliseconds per call of each step a round adds, and their sum per round."""
    name = "uni-a"
    record = _witnesses(world, name)
    receipt = world.receipts[(name, 2)]
    folder = receipt_book(states[name]).folder

    def server() -> None:
        with world.ledger.session() as s:
            for member in THREE:
                cosigned_by(s, member)

    figures = {
        "server_cosigned_by_all_nodes_ms": _median_ms(server, repeats),
        "node_take_witnesses_ms": _median_ms(
            lambda: take_witnesses(states[name], name, record, world.flower_run_id), repeats
        ),
        "node_member_check_ms": _median_ms(
            lambda: member_problem(receipt, name, None, folder), repeats
        ),
    }
    figures["per_round_ms"] = sum(figures.values())
    return figures


def baseline(folder: Path, rounds: int) -> dict[str, float | None]:
    """One CNN demo: mean seconds per round (ledger) and the final query's seconds (run log)."""
    from fedcommons.demo import run_demo  # here: it imports Flower's server side

    policy = Policy().with_overrides({"federation.rounds": rounds})
    summary = run_demo(folder, policy, keep_log=True)
    seconds = [r["seconds"] for r in summary["rounds"]]
    logs = "".join(p.read_text(errors="replace") for p in (folder / "logs").glob("run-*.log"))
    found = re.search(r"witness quorum \(([0-9.]+) s\)", logs)
    return {
        "round_seconds_mean": statistics.fmean(seconds),
        "final_query_seconds": float(found.group(1)) if found else None,
        "established_everywhere": all(
            q["pending"] == 0 and q["refused"] == 0 for q in summary["quorum"].values()
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--demo-rounds", type=int, default=3)
    parser.add_argument("--no-demo", action="store_true", help="skip (c): no baseline ratio")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows, world, states = delay(Path(tmp) / "world", args.rounds)
        for row in rows:
            print(
                f"round {row['round']}: receipt with the {row['arrives_with']}, "
                f"established with the {row['established_with']}"
            )
        figures = cost(world, states, args.repeats)
        world.ledger.close()
        for key, value in figures.items():
            print(f"{key}: {value:.3f}")
        demo = None if args.no_demo else baseline(Path(tmp) / "demo", args.demo_rounds)
    ratio = None
    if demo is not None:
        ratio = figures["per_round_ms"] / 1000 / demo["round_seconds_mean"]  # type: ignore[operator]
        print(
            f"CNN demo round {demo['round_seconds_mean']:.2f} s; quorum checks per round "
            f"{figures['per_round_ms']:.2f} ms = {100 * ratio:.3f} % of it (goal < 1 %); final "
            f"query {demo['final_query_seconds']} s per run; every node established "
            f"everything: {demo['established_everywhere']}"
        )
    write_record(RESULT, delay=rows, cost_ms=figures, demo=demo, share_of_cnn_round=ratio)
    print(f"written to {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

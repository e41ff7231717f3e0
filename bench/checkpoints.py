"""What C2SP checkpoints and cosignatures cost beside the JSON heads they replace (issue 21).

Times, per operation (median of ``--repeats`` batches of ``--batch`` calls, in
one process): signing and verifying a tree head in the JSON form signed before
ledger v12 and as a C2SP checkpoint (the product's ``TreeHead.sign`` /
``TreeHead.verify``); a node's ``cosignature/v1`` on a checkpoint
(``client.receipts.cosign_heads``) and the server's check of one
(``common.note.verify_cosignature``); and Go's ``note.Open`` plus ``tlog``
checks over every checkpoint and receipt of a ledger, through the interop
program the tests build (``tests/support/interop/checkpoints.go``; compile time
excluded by a first, untimed run).

Usage::

    python bench/checkpoints.py
"""

from __future__ import annotations

import argparse
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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from record import write_record  # noqa: E402

from client.receipts import cosign_heads  # noqa: E402
from common.consortium import default_log_origin  # noqa: E402
from common.note import SignatureLine, verifier_key, verify_cosignature  # noqa: E402
from common.receipts import TreeHead  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "checkpoints.json"


def _per_call_us(call: Callable[[], object], batch: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batch):
            call()
        times.append((time.perf_counter() - started) / batch)
    return statistics.median(times) * 1e6


def _go_seconds(rounds: int) -> dict[str, Any]:
    """Go's checks of a ledger with ``rounds`` cosigned checkpoints and their receipts."""
    from tests.support.go_interop import go_checks, interop_input
    from tests.support.receipt_world import (
        NAMES,
        OPERATOR,
        accept_all,
        cosign_all,
        make_world,
        record_world_round,
    )

    folder = Path(tempfile.mkdtemp(prefix="bench-checkpoints-"))
    world = make_world(f"sqlite:///{folder / 'ledger.db'}", folder)
    for number in range(3, rounds + 1):
        record_world_round(world, number)
    accept_all(world)
    cosign_all(world)
    receipts = [r for (_, _), r in sorted(world.receipts.items())]
    vkey = verifier_key(default_log_origin(OPERATOR.public_key()), OPERATOR.public_key())
    doc = interop_input(world.ledger, vkey, receipts)
    world.ledger.close()
    go_checks(doc, folder / "go")  # compiles; untimed
    started = time.perf_counter()
    result = go_checks(doc, folder / "go")
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"Go refused the ledger: {result.stderr}")
    return {
        "checkpoints": rounds,
        "cosignatures": rounds * len(NAMES),
        "receipts": len(receipts),
        "go_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--go-rounds", type=int, default=50)
    args = parser.parse_args()
    operator, witness = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    origin = default_log_origin(operator.public_key())

    def sign(form: str | None) -> TreeHead:
        return TreeHead.sign(
            operator,
            tree_size=123_456,
            root="ab" * 32,
            at="2026-12-02T00:00:00+00:00",
            note="run 1 round 8",
            origin=form,
        )

    json_head, checkpoint = sign(None), sign(origin)
    (cosigned,) = cosign_heads([checkpoint], "university-a", witness, now=1_800_000_000)
    line = SignatureLine.parse(cosigned.line)
    text = checkpoint.body().decode()
    public = operator.public_key()
    rows = {
        "sign, JSON head": _per_call_us(lambda: sign(None), args.batch, args.repeats),
        "sign, C2SP checkpoint": _per_call_us(lambda: sign(origin), args.batch, args.repeats),
        "verify, JSON head": _per_call_us(
            lambda: json_head.verify(public), args.batch, args.repeats
        ),
        "verify, C2SP checkpoint": _per_call_us(
            lambda: checkpoint.verify(public, origin), args.batch, args.repeats
        ),
        "cosign (node)": _per_call_us(
            lambda: cosign_heads([checkpoint], "university-a", witness), args.batch, args.repeats
        ),
        "check a cosignature (server, auditor)": _per_call_us(
            lambda: verify_cosignature(text, line, witness.public_key()), args.batch, args.repeats
        ),
    }
    go = _go_seconds(args.go_rounds)
    print("| operation | µs per call |\n| --- | ---: |")
    for name, micro in rows.items():
        print(f"| {name} | {micro:.1f} |")
    print(
        f"\nGo (x/mod note + tlog): {go['checkpoints']} checkpoints with {go['cosignatures']} "
        f"cosignatures and {go['receipts']} receipts in {go['go_seconds']:.2f} s "
        "(go run, compiled before)"
    )
    write_record(RESULTS, per_call_us=rows, go=go)


if __name__ == "__main__":
    main()

"""Final test accuracy, attack x defence, on the embedded digits federation with DP.

Five institutions split the demo's data (the policy's partition); one of
them (``company-e``) is an authentic attacker: it trains with DP like the
others, then sends what its attack makes of its update, signed and sealed
with its own key. Every cell trains a federation from scratch through
``tests/support/hostile_federation.py``: the ClientApp's training code, real
envelopes, and the consortium strategy composed as the ServerApp composes it
(update gate, claim check, norm bound, Flower's aggregation rule). Only
Flower's transport is left out, which changes no number. This in-process
harness is a shortcut kept because the attacker's code must never be part
of the shipped ClientApp that ``fedcommons simulate`` runs: with DP off,
``tests/fedcommons/test_simulation.py`` checks that its first round's global model
equals the simulation's and the deployment's (same seed and split), and
BENCHMARKS.md (issue 20) compares its clean accuracy with DP to the
simulation's.

Rows: ``clean`` (all five honest), ``absent`` (the attacker never answers:
what rejecting every one of its updates leaves, its data included) and
each attack.

Defences (columns):

- ``none``: FedAvg, no norm bound, example counts not checked (what the
  platform did before issue 16);
- ``default``: what a policy gets when it says nothing: FedAvg, the adaptive
  norm bound (median of the round's update norms) and the claim check;
- each robust rule (``trimmed-mean``, ``median``, ``krum``, ``multi-krum``,
  ``bulyan``) declaring one attacker, with the claim check and no norm bound,
  so the column shows the rule itself. A rule the policy refuses for five
  institutions is shown with the policy's reason.

Usage::

    python bench/attacks.py                               # the whole table
    python bench/attacks.py --attack scaled-x1000 --defence default
    python bench/attacks.py --set federation.rounds=4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomllib
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import write_record  # noqa: E402  (bench/record.py)

from common.policy import Policy, PolicyError, Scalar  # noqa: E402
from server.app.strategy import RoundFailed  # noqa: E402
from tests.support.attacks import ATTACKS  # noqa: E402
from tests.support.hostile_federation import ABSENT, LABEL_FLIP, HostileFederation  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "attacks.json"

INSTITUTIONS = (
    ("university-a", "academia"),
    ("university-b", "academia"),
    ("company-c", "industry"),
    ("university-d", "academia"),
    ("company-e", "industry"),
)
ATTACKER = "company-e"
ATTACK_NAMES = ["clean", ABSENT, *sorted(ATTACKS), LABEL_FLIP]

ROBUST: dict[str, Scalar] = {"federation.byzantine": 1, "federation.update-norm-bound": "off"}
DEFENCES: dict[str, dict[str, Scalar]] = {
    "none": {"federation.update-norm-bound": "off"},
    "default": {},
    "trimmed-mean": {
        **ROBUST,
        "federation.aggregator": "trimmed-mean",
        "federation.trim-fraction": 0.34,  # one of three (the quorum) to five at each end
    },
    "median": {**ROBUST, "federation.aggregator": "median"},
    "krum": {**ROBUST, "federation.aggregator": "krum", "federation.min-nodes": 5},
    "multi-krum": {**ROBUST, "federation.aggregator": "multi-krum", "federation.min-nodes": 5},
    "bulyan": {**ROBUST, "federation.aggregator": "bulyan", "federation.min-nodes": 5},
}


def run_cell(base: Policy, attack: str, defence: str, workdir: Path) -> dict[str, Any]:
    """One federation from scratch: its test accuracy and what the defences did."""
    cell: dict[str, Any] = {"attack": attack, "defence": defence}
    try:
        policy = base.with_overrides(DEFENCES[defence], source=f"defence {defence}")
    except PolicyError as err:
        return {**cell, "refused": str(err)}
    federation = HostileFederation(
        policy,
        workdir,
        INSTITUTIONS,
        attacker=None if attack == "clean" else ATTACKER,
        attack=None if attack == "clean" else attack,
        check_claims=defence != "none",
    )
    curve = []
    try:
        for server_round in range(1, policy.federation.rounds + 1):
            curve.append(round(federation.round(server_round), 4))
    except RoundFailed as err:
        cell["failed"] = str(err)
    tally, attacker = federation.tally, ATTACKER
    return {
        **cell,
        "test_accuracy": None if "failed" in cell else federation.test_accuracy(),
        "validation_curve": curve,
        "attacker_rejected_rounds": sum(e.institution == attacker for _, e in tally.exclusions),
        "attacker_defence_rounds": len({r for r, d in tally.defences if d.institution == attacker}),
        "honest_defence_facts": sum(1 for _, d in tally.defences if d.institution != attacker),
    }


def _shown(cell: dict[str, Any]) -> str:
    if "refused" in cell:
        return "refused"
    if "failed" in cell:
        return f"failed r{len(cell['validation_curve']) + 1}"
    return f"{cell['test_accuracy']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", action="append", choices=ATTACK_NAMES)
    parser.add_argument("--defence", action="append", choices=list(DEFENCES))
    parser.add_argument("--policy", type=Path, help="base policy (default: the demo's)")
    parser.add_argument("--set", action="append", default=[], help="section.key=TOML value")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base = Policy.load(args.policy) if args.policy else Policy()
    base = base.with_overrides(
        {
            key: tomllib.loads(f"v = {value}")["v"]
            for key, _, value in (item.partition("=") for item in args.set)
        },
        source="--set",
    )
    attacks = args.attack or ATTACK_NAMES
    defences = args.defence or list(DEFENCES)
    console = Console()
    cells = []
    for attack in attacks:
        for defence in defences:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                cell = run_cell(base, attack, defence, Path(tmp))
            cell["seconds"] = round(time.perf_counter() - started, 1)
            cells.append(cell)
            detail = cell.get("refused") or cell.get("failed") or cell["validation_curve"]
            line = f"{attack:18s} {defence:13s} {_shown(cell):>9s}  {detail}"
            console.print(line, soft_wrap=True)
    table = Table(title=f"Test accuracy, 5 institutions ({ATTACKER} attacking), DP on")
    table.add_column("attack")
    for defence in defences:
        table.add_column(defence, justify="right")
    for attack in attacks:
        row = {c["defence"]: _shown(c) for c in cells if c["attack"] == attack}
        table.add_row(attack, *(row[d] for d in defences))
    console.print(table)
    write_record(
        args.out,
        policy=base.to_sections(),
        institutions=[name for name, _ in INSTITUTIONS],
        attacker=ATTACKER,
        cells=cells,
    )


if __name__ == "__main__":
    main()

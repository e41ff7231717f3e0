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

Rows: ``clean`` (all five honest), ``absent`` (the attackers never answer:
what rejecting every one of their updates leaves, their data included) and
each attack; ``--colluders 2`` makes ``company-c`` attack with ``company-e``.
The collusion attacks (issue 32) are omniscient: ``under-bound`` (every
colluder sends the same update, against the honest mean with norm 0.99 x
the honest median), ``alie`` (A Little Is Enough: the honest mean minus one
standard deviation) and ``relabel-0-to-8`` (each attacker trains honestly on
its zeros relabelled as eights; the cell reports the share of test zeros
called eight). The relabel is run by ``university-b`` (and ``university-d``),
who hold the most zeros: the companies hold almost none.

Every cell records to a real SQLite ledger (a run with the five enrolled)
through the ServerApp's ``LedgerRecorder``, with every round valued, and
reads the ledger back: what the defences did to the attackers, the
collusion evidence (``suspected`` entries) and each institution's share of
the contribution values.

Defences (columns):

- ``none``: FedAvg, no norm bound, example counts not checked, no trust (what
  the platform did before issue 16);
- ``before``: the default before issue 32: FedAvg, the adaptive norm bound
  (median of the round's update norms) and the claim check, no trust;
- ``default``: what a policy gets when it says nothing: ``before`` plus
  trust bootstrapping on the server's validation split (``federation.trust =
  "reference"``), near-identical updates sharing one weight;
- ``reference-bound``: ``before`` with the bound at the reference update's norm;
- each robust rule (``trimmed-mean``, ``median``, ``krum``, ``multi-krum``,
  ``bulyan``) declaring one attacker, with the claim check, no norm bound and
  no trust, so the column shows the rule itself; ``median+trust`` is the
  median over the trust-rescaled updates. A rule the policy refuses for five
  institutions is shown with the policy's reason.

Usage::

    python bench/attacks.py                               # the whole table
    python bench/attacks.py --attack scaled-x1000 --defence default
    python bench/attacks.py --set federation.rounds=4
    python bench/attacks.py --attack alie --colluders 1 --colluders 2 --runs 2
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
from sqlalchemy import select  # noqa: E402

from common.policy import Policy, PolicyError, Scalar  # noqa: E402
from ledger import Ledger, enrol_participant  # noqa: E402
from ledger.contributions import contributions_report  # noqa: E402
from ledger.runs import start_run  # noqa: E402
from ledger.schema import Defence  # noqa: E402
from server.app.strategy import LedgerRecorder, RoundFailed  # noqa: E402
from server.app.strategy.evidence import SUSPECTED  # noqa: E402
from tests.support.attacks import ATTACKS, COLLUSIONS, TARGETED  # noqa: E402
from tests.support.hostile_federation import (  # noqa: E402
    ABSENT,
    FLOWER_RUN,
    LABEL_FLIP,
    HostileFederation,
)

RESULTS = ROOT / "bench" / "results" / "attacks.json"

INSTITUTIONS = (
    ("university-a", "academia"),
    ("university-b", "academia"),
    ("company-c", "industry"),
    ("university-d", "academia"),
    ("company-e", "industry"),
)
ATTACKERS = ("company-e", "company-c")
"""The first ``--colluders`` of these attack (company-e alone, or both companies)."""
TARGETERS = ("university-b", "university-d")
"""Who runs the targeted relabel: the two holding the most zeros (57 and 37; company-e has 2)."""
ATTACK_NAMES = ["clean", ABSENT, *sorted(ATTACKS), LABEL_FLIP, *sorted(COLLUSIONS), TARGETED]

NO_TRUST: dict[str, Scalar] = {"federation.trust": "off"}
ROBUST: dict[str, Scalar] = {
    **NO_TRUST,
    "federation.byzantine": 1,
    "federation.update-norm-bound": "off",
}
DEFENCES: dict[str, dict[str, Scalar]] = {
    "none": {**NO_TRUST, "federation.update-norm-bound": "off"},
    "before": NO_TRUST,  # the default before issue 32: adaptive norm bound, no trust
    "default": {},  # trust bootstrapping on the validation split, adaptive norm bound
    "reference-bound": {**NO_TRUST, "federation.update-norm-bound": "reference"},
    "trimmed-mean": {
        **ROBUST,
        "federation.aggregator": "trimmed-mean",
        "federation.trim-fraction": 0.34,  # one of three (the quorum) to five at each end
    },
    "median": {**ROBUST, "federation.aggregator": "median"},
    "median+trust": {
        "federation.byzantine": 1,
        "federation.update-norm-bound": "off",
        "federation.aggregator": "median",
    },
    "krum": {**ROBUST, "federation.aggregator": "krum", "federation.min-nodes": 5},
    "multi-krum": {**ROBUST, "federation.aggregator": "multi-krum", "federation.min-nodes": 5},
    "bulyan": {**ROBUST, "federation.aggregator": "bulyan", "federation.min-nodes": 5},
}


def _ledger(workdir: Path, rounds: int) -> tuple[Ledger, int]:
    """A SQLite ledger with the five enrolled and a run started: what the ServerApp records to."""
    ledger = Ledger(f"sqlite:///{workdir / 'ledger.db'}")
    with ledger.session() as s:
        for name, kind in INSTITUTIONS:
            enrol_participant(s, name, kind)
        run_id = start_run(
            s,
            policy_sha256="0" * 64,
            policy_toml="",
            model="cnn",
            dataset="digits",
            initial_model_sha256="1" * 64,
            planned_rounds=rounds,
            flower_run_id=FLOWER_RUN,
        ).id
    return ledger, run_id


def _read_back(ledger: Ledger, attackers: tuple[str, ...]) -> dict[str, Any]:
    """What the ledger holds about the cell: defences by rule, evidence, values by institution."""
    with ledger.session() as s:
        rows = s.scalars(select(Defence)).all()
        facts = [(r.round_number, r.participant.name, r.rule, r.action) for r in rows]
        (report,) = contributions_report(s)
    evidence: dict[str, list[str]] = {}
    for _, name, rule, action in facts:
        if action == SUSPECTED:
            evidence.setdefault(rule, []).append(name)
    shares = {i["name"]: i["share"] for i in report["institutions"]}
    values = {i["name"]: i["value_ppm"] for i in report["institutions"]}
    return {
        "attacker_defence_rounds": len({r for r, n, _, a in facts if n in attackers}),
        "attacker_zero_weight_rounds": sum(
            1 for _, n, _, a in facts if n in attackers and a == "weighted zero"
        ),
        "honest_defence_facts": sum(
            1 for _, n, _, a in facts if n not in attackers and a != SUSPECTED
        ),
        "evidence": {rule: sorted(set(names)) for rule, names in evidence.items()},
        "values_ppm": values,
        "shares": shares,
        "attacker_share": round(sum(shares.get(a) or 0.0 for a in attackers), 4),
    }


def run_cell(
    base: Policy, attack: str, defence: str, workdir: Path, colluders: int = 1
) -> dict[str, Any]:
    """One federation from scratch, recorded in a real ledger: its accuracy and what it holds."""
    attackers = (TARGETERS if attack == TARGETED else ATTACKERS)[:colluders]
    cell: dict[str, Any] = {"attack": attack, "defence": defence, "attackers": list(attackers)}
    try:
        policy = base.with_overrides(DEFENCES[defence], source=f"defence {defence}")
    except PolicyError as err:
        return {**cell, "refused": str(err)}
    ledger, run_id = _ledger(workdir, policy.federation.rounds)
    recorder = LedgerRecorder(ledger, run_id, flower_run_id=str(FLOWER_RUN), snapshot_dir=None)
    federation = HostileFederation(
        policy,
        workdir,
        INSTITUTIONS,
        attacker=None if attack == "clean" else attackers,
        attack=None if attack == "clean" else attack,
        check_claims=defence != "none",
        recorder=recorder,
        valued=True,
    )
    curve = []
    try:
        for server_round in range(1, policy.federation.rounds + 1):
            curve.append(round(federation.round(server_round), 4))
    except RoundFailed as err:
        cell["failed"] = str(err)
    done = "failed" not in cell
    classes = federation.test_class_accuracy() if done else None
    result = {
        **cell,
        "test_accuracy": federation.test_accuracy() if done else None,
        "test_class_0": None if classes is None else round(classes[0], 4),
        "test_zeros_called_eight": round(federation.test_confusion(0, 8), 4) if done else None,
        "validation_curve": curve,
        "attacker_rejected_rounds": sum(
            e.institution in attackers for _, e in federation.tally.exclusions
        ),
        **_read_back(ledger, attackers),
    }
    ledger.close()
    return result


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
    parser.add_argument(
        "--colluders", action="append", type=int, choices=(1, 2), help="attackers (default 1)"
    )
    parser.add_argument("--runs", type=int, default=1, help="federations per cell (default 1)")
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
    counts = args.colluders or [1]
    console = Console()
    cells = []
    rows = [(a, k) for a in attacks for k in ([1] if a == "clean" else counts)]
    for attack, colluders in rows:
        for defence in defences:
            for run in range(1, args.runs + 1):
                started = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    cell = run_cell(base, attack, defence, Path(tmp), colluders)
                cell["run"], cell["seconds"] = run, round(time.perf_counter() - started, 1)
                cells.append(cell)
                detail = cell.get("refused") or cell.get("failed") or cell["validation_curve"]
                line = (
                    f"{attack:18s} x{colluders} {defence:15s} {_shown(cell):>9s} "
                    f"zeros->8 {cell.get('test_zeros_called_eight')} "
                    f"share {cell.get('attacker_share')} evidence {cell.get('evidence')} {detail}"
                )
                console.print(line, soft_wrap=True)
    table = Table(title="Test accuracy, 5 institutions, DP on (runs separated by /)")
    table.add_column("attack")
    for defence in defences:
        table.add_column(defence, justify="right")
    for attack, colluders in rows:
        mine = [c for c in cells if c["attack"] == attack and len(c["attackers"]) == colluders]
        shown = {d: " / ".join(_shown(c) for c in mine if c["defence"] == d) for d in defences}
        label = attack if attack == "clean" else f"{attack} x{colluders}"
        table.add_row(label, *(shown[d] for d in defences))
    console.print(table)
    write_record(
        args.out,
        policy=base.to_sections(),
        institutions=[name for name, _ in INSTITUTIONS],
        attackers=list(ATTACKERS),
        targeters=list(TARGETERS),
        cells=cells,
    )


if __name__ == "__main__":
    main()

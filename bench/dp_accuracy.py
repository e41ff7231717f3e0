"""Test accuracy versus the privacy budget on the embedded digits federation.

Each cell runs the demo's policy (or ``--policy``) with one epsilon budget
and one partition through ``fedcommons simulate`` (the library call behind
it): the product's own ServerApp and ClientApp on Flower's Simulation Engine,
each institution enrolled and admitted with its own data, state folder and
accountant, sealed updates, the server's defences, the ledger and every
receipt verified. It reports the ServerApp's final accuracy on the
operator's held-out test split and the validation accuracy of every round.
(Until issue 20 this ran a FedAvg loop of its own in this process, which
left out the server's defences; that loop is gone.)

``--tune`` reports and prints the validation accuracy only. The ServerApp
still scores the test split once at the end and records it in the ledger,
as every run does; the tuning never reads it.

Usage::

    python bench/dp_accuracy.py                          # the whole table
    python bench/dp_accuracy.py --epsilon 8 --partition non-iid
    python bench/dp_accuracy.py --institutions 10 --epsilon 8
    python bench/dp_accuracy.py --set training.batch-size=64 --set federation.rounds=10
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import write_record  # noqa: E402  (bench/record.py)

from common.images import ImageData  # noqa: E402
from common.local_data import load_local_data, server_split_path, to_examples  # noqa: E402
from common.model import build_model  # noqa: E402
from common.policy import Policy  # noqa: E402
from common.text import TextData  # noqa: E402
from common.training import evaluate, local_sgd, make_loader, train  # noqa: E402
from fedcommons.demo_setup import prepare_data, with_model  # noqa: E402
from fedcommons.simulation import run_simulation  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dp_accuracy.json"


def _policy(base: Policy, epsilon: float, partition: str) -> Policy:
    privacy = {"privacy.dp": False} if math.isinf(epsilon) else {"privacy.epsilon": epsilon}
    return base.with_overrides({"data.partition": partition, **privacy})


def run_cell(
    policy: Policy, workdir: Path, *, institutions: int = 3, test: bool = True
) -> dict[str, Any]:
    """Run one federation from scratch on the Simulation Engine; accuracy and epsilon spent.

    With ``test=False`` (tuning) only the validation curve is returned.
    """
    summary = run_simulation(workdir, policy, institutions=institutions)
    curve = [round(r["accuracy"], 4) for r in summary["rounds"]]
    for number, accuracy in enumerate(curve, start=1):
        print(f"  round {number}: validation {accuracy:.4f}", flush=True)
    return {
        "test_accuracy": summary["final_accuracy"] if test else None,
        "validation_accuracy": curve[-1],
        "validation_curve": curve,
        "epsilon_spent": {
            i["name"]: i["epsilon"] if isinstance(i["epsilon"], float) else None
            for i in summary["institutions"]
        },
        "wall_seconds": summary["wall_seconds"],
    }


def run_centralized(policy: Policy, workdir: Path) -> dict[str, Any]:
    """The ceiling: one party holding every institution's training data, no DP.

    Same model, optimizer and schedule as the federation: for each planned
    round, ``local-epochs`` passes over the pooled data at that round's
    learning rate, with the batch gradient clipped as ``dp = false`` does.
    """
    layout = prepare_data(workdir, policy)
    parts = [load_local_data(policy, node.data_dir) for node in layout.nodes]
    pooled = parts[0]
    for part in parts[1:]:
        if isinstance(pooled, TextData) and isinstance(part, TextData):
            pooled = TextData(
                pooled.texts + part.texts,
                np.concatenate([pooled.labels, part.labels]),
                pooled.label_names,
            )
        elif isinstance(pooled, ImageData) and isinstance(part, ImageData):
            pooled = ImageData(
                np.concatenate([pooled.images, part.images]),
                np.concatenate([pooled.labels, part.labels]),
                "pooled",
            )
    examples = to_examples(policy, pooled)
    model = build_model(policy.model, policy.federation.seed)
    rounds, training = policy.federation.rounds, policy.training
    for server_round in range(1, rounds + 1):
        loader = make_loader(examples, training.batch_size, shuffle=True, seed=server_round)
        lr = training.learning_rate_at(server_round, rounds)
        train(
            model,
            loader,
            local_sgd(model, lr, training.momentum),
            training.local_epochs,
            max_grad_norm=policy.privacy.max_grad_norm,
        )
        print(f"  centralized round {server_round} done", flush=True)
    test = to_examples(
        policy, load_local_data(policy, server_split_path(policy, layout.server_data_dir, "test"))
    )
    return {"test_accuracy": evaluate(model, test).accuracy, "examples": len(pooled)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilon", type=float, action="append", help="repeatable; inf = no DP")
    parser.add_argument("--partition", action="append", choices=["iid", "non-iid"])
    parser.add_argument("--policy", type=Path, help="base policy (default: the demo's)")
    parser.add_argument(
        "--model", choices=["cnn", "bert"], help="switch the policy as `demo --model` does"
    )
    parser.add_argument("--set", action="append", default=[], help="section.key=TOML value")
    parser.add_argument(
        "--centralized", action="store_true", help="only the pooled, non-private ceiling"
    )
    parser.add_argument("--seeds", type=int, default=1, help="repeat each cell with seeds 42..")
    parser.add_argument("--institutions", type=int, default=3, help="virtual institutions")
    parser.add_argument(
        "--tune",
        action="store_true",
        help="report the final validation accuracy only; the test split is never read",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base = Policy.load(args.policy) if args.policy else Policy()
    if args.model:
        base = with_model(base, args.model)
    base = base.with_overrides(
        {
            key: tomllib.loads(f"v = {value}")["v"]
            for key, _, value in (item.partition("=") for item in args.set)
        },
        source="--set",
    )
    if args.centralized:
        for partition in args.partition or ["non-iid"]:
            policy = _policy(base, math.inf, partition)
            with tempfile.TemporaryDirectory() as tmp:
                cell = run_centralized(policy, Path(tmp))
            print(f"centralized, no DP ({partition}, pooled): test={cell['test_accuracy']:.4f}")
        return
    epsilons = args.epsilon or [1.0, 3.0, 8.0, math.inf]
    partitions = args.partition or ["iid", "non-iid"]

    console = Console()
    metric = "validation_accuracy" if args.tune else "test_accuracy"
    cells = []
    for partition in partitions:
        for epsilon in epsilons:
            accuracies = []
            for seed_offset in range(args.seeds):
                policy = _policy(base, epsilon, partition)
                seed = policy.federation.seed + seed_offset
                policy = policy.with_overrides({"federation.seed": seed})
                started = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    cell = run_cell(
                        policy, Path(tmp), institutions=args.institutions, test=not args.tune
                    )
                cell.update(
                    partition=partition,
                    epsilon_budget=None if math.isinf(epsilon) else epsilon,
                    seed=policy.federation.seed,
                    seconds=time.perf_counter() - started,
                )
                cells.append(cell)
                accuracies.append(cell[metric])
                console.print(
                    f"{partition:8s} eps={epsilon:<5g} seed={policy.federation.seed} "
                    f"{metric}={cell[metric]:.4f} curve={cell['validation_curve']} "
                    f"({cell['seconds']:.0f}s)"
                )
    title = "Final validation" if args.tune else "Test"
    table = Table(
        title=f"{title} accuracy vs epsilon ({args.institutions} institutions, {base.data.dataset})"
    )
    table.add_column("partition")
    for epsilon in epsilons:
        table.add_column("no DP" if math.isinf(epsilon) else f"ε = {epsilon:g}", justify="right")
    for partition in partitions:
        row = []
        for epsilon in epsilons:
            accs = [
                c[metric]
                for c in cells
                if c["partition"] == partition
                and c["epsilon_budget"] == (None if math.isinf(epsilon) else epsilon)
            ]
            row.append(f"{np.mean(accs):.3f}" + (f" ±{np.std(accs):.3f}" if len(accs) > 1 else ""))
        table.add_row(partition, *row)
    console.print(table)
    write_record(
        args.out,
        engine="flower-simulation",
        institutions=args.institutions,
        policy=base.to_sections(),
        cells=cells,
    )


if __name__ == "__main__":
    main()

"""Test accuracy versus the privacy budget on the embedded digits federation.

Each cell trains the demo's policy (or ``--policy``) with one epsilon budget
and one partition, for three institutions, and reports the final accuracy on
the operator's held-out test split. The federation runs in this process: the
same data files ``common.demo.prepare_data`` writes, the same client code
(``client.task.ClientSetup`` and ``train_round``, so DP-SGD, the persistent
accountant and the budget check are exactly the ClientApp's), and FedAvg's
example-weighted mean (``np.average(..., weights=num_examples)``, which
``tests/test_strategy.py`` checks the ServerApp's aggregation against).
Only Flower's transport is left out, which changes no number; the demo's own
figure, on real Flower processes, is measured with ``fedcommons demo``.

Usage::

    python bench/dp_accuracy.py                          # the whole table
    python bench/dp_accuracy.py --epsilon 8 --partition non-iid
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

from client.task import ClientSetup, train_round  # noqa: E402
from common.bert_top import scoring_view  # noqa: E402
from common.images import ImageData  # noqa: E402
from common.local_data import load_local_data, server_split_path, to_examples  # noqa: E402
from common.model import build_model, get_arrays, set_arrays  # noqa: E402
from common.policy import Policy  # noqa: E402
from common.protocol import TrainConfig  # noqa: E402
from common.text import TextData  # noqa: E402
from common.training import evaluate, local_sgd, make_loader, train  # noqa: E402
from fedcommons.demo_setup import prepare_data, with_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dp_accuracy.json"


def _policy(base: Policy, epsilon: float, partition: str) -> Policy:
    privacy = {"privacy.dp": False} if math.isinf(epsilon) else {"privacy.epsilon": epsilon}
    return base.with_overrides({"data.partition": partition, **privacy})


def run_cell(policy: Policy, workdir: Path, *, test: bool = True) -> dict[str, Any]:
    """Train one federation from scratch; return test accuracy and epsilon spent.

    With ``test=False`` (tuning) the test split is not read at all: only the
    validation curve is returned.
    """
    layout = prepare_data(workdir, policy)
    run_config = policy.to_run_config()
    setups = [
        ClientSetup.from_configs(
            run_config,
            {
                "institution": node.institution,
                "data-dir": str(node.data_dir),
                "state-dir": str(node.state_dir),
            },
        )
        for node in layout.nodes
    ]
    model = build_model(policy.model, policy.federation.seed)
    weights = get_arrays(model)
    validation = to_examples(
        policy,
        load_local_data(policy, server_split_path(policy, layout.server_data_dir, "validation")),
    )
    scorer, validation = scoring_view(model, validation)  # as the ServerApp scores BERT
    curve = []
    epsilon: dict[str, float] = {}
    momentum: dict[str, np.ndarray] = {}
    fed = policy.federation
    for server_round in range(1, policy.federation.rounds + 1):
        outcomes = [train_round(s, weights, TrainConfig(server_round)) for s in setups]
        examples = [len(s.data) for s in setups]
        averaged = {
            name: np.average([o.weights[name] for o in outcomes], axis=0, weights=examples).astype(
                weights[name].dtype
            )
            for name in weights
        }
        if fed.server_momentum == 0.0 and fed.server_learning_rate == 1.0:
            weights = averaged
        else:  # Flower's FedAvgM, which the ServerApp composes
            for name in weights:
                step = weights[name] - averaged[name]
                momentum[name] = (
                    fed.server_momentum * momentum[name] + step if name in momentum else step
                )
                weights[name] = weights[name] - fed.server_learning_rate * momentum[name]
        set_arrays(model, weights)
        curve.append(round(evaluate(scorer, validation).accuracy, 4))
        print(f"  round {server_round}: validation {curve[-1]:.4f}", flush=True)
        epsilon = {s.institution: o.charge.epsilon for s, o in zip(setups, outcomes, strict=True)}
    set_arrays(model, weights)
    accuracy = None
    if test:
        split = server_split_path(policy, layout.server_data_dir, "test")
        accuracy = evaluate(model, to_examples(policy, load_local_data(policy, split))).accuracy
    return {
        "test_accuracy": accuracy,
        "validation_accuracy": curve[-1],
        "validation_curve": curve,
        "epsilon_spent": {k: (None if math.isinf(v) else v) for k, v in epsilon.items()},
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
                    cell = run_cell(policy, Path(tmp), test=not args.tune)
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
    table = Table(title=f"{title} accuracy vs epsilon (3 institutions, {base.data.dataset})")
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
    write_record(args.out, policy=base.to_sections(), cells=cells)


if __name__ == "__main__":
    main()

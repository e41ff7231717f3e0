"""Cost of DP-SGD per training step: time and peak memory, DP / non-DP.

Three variants train the policy's CNN on the digits training split with the
client's own functions (``common.training.train`` and ``train_private``):

* ``plain``   -- SGD, no DP;
* ``hooks``   -- Opacus DP-SGD, per-sample gradients from hooks;
* ``ghost``   -- Opacus DP-SGD with ghost clipping (no per-sample gradients
                 are stored, two backward passes).

Each variant runs in its own fresh Python process (so one's allocations do not
hide another's), one torch thread, after a warm-up epoch. Time per step is the
training time of ``--epochs`` epochs divided by the steps taken. Peak memory is
the process's peak resident set (``ru_maxrss``) during those epochs minus its
resident set just before them: what training adds on top of the model and data.

Usage::

    python bench/dp_step.py --batch-size 32 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from record import write_record  # bench/record.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = {
    "cnn": ROOT / "bench" / "results" / "dp_step.json",
    "bert": ROOT / "bench" / "results" / "dp_step_bert.json",
}
VARIANTS = ("plain", "hooks", "ghost")


def _rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() // 1024


def measure(
    variant: str, batch_size: int, epochs: int, model_name: str = "cnn", settings: str = ""
) -> dict[str, Any]:
    """Run in a child process: train ``epochs`` epochs and report time and memory."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from common.dp import DPPlan
    from common.local_data import to_examples
    from common.model import build_model
    from common.policy import Policy
    from common.text import stdlib_docstrings
    from common.training import Examples, local_sgd, make_loader, train, train_private
    from fedcommons.demo_setup import with_model
    from fedcommons.partition import load_digits_data

    torch.set_num_threads(1)
    policy = with_model(Policy(), model_name)
    if settings:
        policy = policy.with_overrides(
            {
                key: json.loads(value)
                for key, _, value in (item.partition("=") for item in settings.split(";"))
            }
        )
    data: Examples
    if model_name == "bert":  # 256 docstrings: a few steps per epoch at batch 32
        data = to_examples(policy, stdlib_docstrings().subset(np.arange(0, 1280, 5)))
    else:
        data = load_digits_data()
    model = build_model(policy.model, 0)
    optimizer = local_sgd(model, policy.training.learning_rate, policy.training.momentum)

    def run(n_epochs: int) -> int:
        loader = make_loader(data, batch_size, shuffle=variant == "plain", seed=0)
        if variant == "plain":
            return train(model, loader, optimizer, n_epochs).steps
        batches = len(loader)
        result, _ = train_private(
            model,
            loader,
            optimizer,
            epochs=n_epochs,
            plan=DPPlan(1.0, 1.0 / batches, n_epochs * batches),
            max_grad_norm=1.0,
            grad_sample_mode=variant,
            accountant="rdp",
            history=[],
        )
        return result.steps

    run(1)  # warm-up: first-call allocations and lazy initialisation
    before = _rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    steps = run(epochs)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "batch_size": batch_size,
        "steps": steps,
        "ms_per_step": 1000 * seconds / steps,
        "peak_added_mib": max(peak - before, 0) / 1024,
        "peak_rose": peak > peak_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, action="append")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--model", default="cnn", choices=["cnn", "bert"])
    parser.add_argument(
        "--set", default="", help="policy changes, 'model.train-layers=0;model.lora-rank=8'"
    )
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, help="default: bench/results/dp_step.json (dp_step_bert.json for BERT)"
    )
    args = parser.parse_args()
    if args.child:
        row = measure(args.child[0], int(args.child[1]), args.epochs, args.model, args.set)
        print(json.dumps(row))
        return

    rows = []
    for batch_size in args.batch_size or [32, 256]:
        for variant in VARIANTS:
            completed = subprocess.run(
                [sys.executable, __file__, "--child", variant, str(batch_size),
                 "--epochs", str(args.epochs), "--model", args.model, "--set", args.set],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(
        f"{'batch':>5} {'variant':>7} {'ms/step':>8} {'x plain':>7} {'peak MiB':>9} {'x plain':>7}"
    )
    for row in rows:
        plain = next(
            r for r in rows if r["batch_size"] == row["batch_size"] and r["variant"] == "plain"
        )
        row["time_ratio"] = row["ms_per_step"] / plain["ms_per_step"]
        row["memory_ratio"] = (
            row["peak_added_mib"] / plain["peak_added_mib"] if plain["peak_added_mib"] else None
        )
        print(
            f"{row['batch_size']:>5} {row['variant']:>7} {row['ms_per_step']:>8.2f} "
            f"{row['time_ratio']:>7.2f} {row['peak_added_mib']:>9.1f} "
            f"{row['memory_ratio'] or float('nan'):>7.2f}"
        )
    write_record(args.out or RESULTS[args.model], rows=rows)


if __name__ == "__main__":
    main()

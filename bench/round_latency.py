"""Wall time per federated round, split into client compute and overhead.

Two variants train the same CNN (``common.model.DigitsCNN``, seed 42) with the
same training code (``common.training``) on the same digits partitions (three
institutions, written by ``fedcommons.demo_setup.prepare_data``), each on a real
loopback SuperLink with three SuperNodes (``fedcommons.local_federation.LocalFederation``):

(a) plain    -- ``bench/plain_app``, a quickstart-style Flower app: default
               ``FedAvg()`` (so a client-side evaluate round follows every
               train round), Flower's ``grid.send_and_receive`` (3 s between
               polls) and SuperExec's default 1 s task poll interval.
(b) fedcommons -- ``fedcommons.demo.run_demo`` with ``Policy(rounds=N)``: FedCommons'
               defaults (no client-side evaluation, 0.2 s reply polling, 0.1 s
               SuperExec poll interval, ledger and checkpoint writes).

Per round:

* wall     (a) t_r - t_{r-1}, the timestamps written at the end of
               ``evaluate_fn(r)`` (server-side validation), t_0 by
               ``evaluate_fn(0)`` just before round 1;
           (b) ledger ``rounds.seconds`` (configure_train -> after server
               evaluation and the ledger write).
* compute  max over the round's clients of ``train-seconds``, the time spent
           in the ClientApp's train handler ((a): the whole handler; (b): the
           ledger's ``round_updates.train_seconds``, local training only).
* overhead wall - compute: ClientApp process start-up (every ClientApp is a
           fresh subprocess importing torch), polling, message transfer,
           aggregation, server evaluation, and in (a) the whole client-side
           evaluate round.

Round 1 includes cold-start effects, so means are reported for all rounds and
for rounds 2..N, with round 1 shown on its own.

Usage::

    python bench/round_latency.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from statistics import fmean
from typing import Any

from rich.console import Console
from rich.table import Table

from common.policy import Policy
from fedcommons.demo import run_demo
from fedcommons.demo_setup import prepare_data
from fedcommons.local_federation import LocalFederation
from ledger import Ledger
from ledger.report import ledger_report
from server.operator.flower import FederationError, assemble_app, write_run_config

RESULTS = Path(__file__).resolve().parent / "results" / "round_latency.json"

PLAIN_APP = Path(__file__).resolve().parent / "plain_app"
STATUS_INTERVAL = 10.0  # seconds between `flwr ls` calls, the same for both variants


@dataclass(frozen=True)
class RoundTiming:
    round: int
    wall: float
    compute: float
    accuracy: float

    @property
    def overhead(self) -> float:
        return self.wall - self.compute


# -- (a) plain Flower ---------------------------------------------------------


def build_plain_app(target: Path, config: dict[str, Any]) -> Path:
    """Assemble the plain app's FAB folder: ``plain_app/``, ``common/``, pyproject."""
    import common

    return assemble_app(
        target,
        name="plain-fedavg",
        sources={"plain_app": PLAIN_APP, "common": Path(common.__file__).resolve().parent},
        serverapp="plain_app.server_app:app",
        clientapp="plain_app.client_app:app",
        config=config,
    )


def run_plain(workdir: Path, policy: Policy, timeout: float) -> list[RoundTiming]:
    """Run the plain app for ``policy.federation.rounds`` rounds and time each one."""
    workdir.mkdir(parents=True)
    layout = prepare_data(workdir, policy)
    timing_file = workdir / "timing.jsonl"
    config: dict[str, Any] = {
        "num-server-rounds": policy.federation.rounds,
        "seed": policy.federation.seed,
        "local-epochs": policy.training.local_epochs,
        "batch-size": policy.training.batch_size,
        "learning-rate": policy.training.learning_rate,
        "momentum": policy.training.momentum,
        "server-data-dir": str(layout.server_data_dir.resolve()),
        "timing-file": str(timing_file),
    }
    app_dir = build_plain_app(workdir / "app", config)
    run_config = write_run_config(workdir / "run-config.toml", config)
    # Undo LocalFederation's faster SuperExec polling: Flower's default is 1 s.
    env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"}
    with LocalFederation(workdir, layout.nodes, env=env) as federation:
        run_id = federation.submit(app_dir, run_config)
        deadline = time.monotonic() + timeout
        next_status = time.monotonic() + STATUS_INTERVAL
        while True:
            federation.check_alive()
            last_round_done = (
                timing_file.exists()
                and len(timing_file.read_text().splitlines()) > policy.federation.rounds
            )
            if last_round_done or time.monotonic() >= next_status:
                status = federation.run_status(run_id)
                if str(status["status"]).startswith("finished"):
                    break
                next_status = time.monotonic() + STATUS_INTERVAL
            if time.monotonic() > deadline:
                raise FederationError(f"plain run {run_id} did not finish in {timeout:.0f}s")
            time.sleep(0.5)
        if not str(status["status"]).endswith("completed"):
            raise FederationError(
                f"plain run {run_id} ended as {status['status']}; ServerApp log:\n"
                + federation.run_log(run_id)
            )
    lines = [json.loads(line) for line in timing_file.read_text().splitlines()]
    lines.sort(key=lambda line: line["round"])
    timings = []
    for before, line in pairwise(lines):
        if line["train_replies"] != len(layout.nodes):
            print(f"warning: plain round {line['round']}: {line['train_replies']} train replies")
        timings.append(
            RoundTiming(
                round=line["round"],
                wall=line["time"] - before["time"],
                compute=line["client_train_seconds"],
                accuracy=line["accuracy"],
            )
        )
    return timings


# -- (b) FedCommons -------------------------------------------------------------


def run_fedcommons(workdir: Path, policy: Policy) -> list[RoundTiming]:
    """Run the FedCommons demo and read each round's timing from its ledger."""
    summary = run_demo(workdir, policy, status_interval=STATUS_INTERVAL)
    ledger = Ledger(summary["ledger_url"])
    try:
        with ledger.session() as session:
            report = ledger_report(session)
    finally:
        ledger.close()
    (run,) = [r for r in report["runs"] if r["id"] == summary["ledger_run_id"]]
    return [
        RoundTiming(
            round=r["round"],
            wall=r["seconds"],
            compute=max(u["train_seconds"] for u in r["updates"]),
            accuracy=r["accuracy"],
        )
        for r in run["rounds"]
    ]


# -- report -------------------------------------------------------------------


def means(timings: list[RoundTiming]) -> dict[str, float] | None:
    if not timings:
        return None
    return {
        "rounds": len(timings),
        "wall": fmean(t.wall for t in timings),
        "compute": fmean(t.compute for t in timings),
        "overhead": fmean(t.overhead for t in timings),
    }


def summarise(timings: list[RoundTiming]) -> dict[str, Any]:
    return {
        "rounds": [{**asdict(t), "overhead": t.overhead} for t in timings],
        "round_1": means(timings[:1]),
        "mean_rounds_2_to_n": means(timings[1:]),
        "mean_all_rounds": means(timings),
    }


def ratios(plain: dict[str, Any], fedcommons: dict[str, Any]) -> dict[str, Any]:
    """(b)/(a) of mean wall and mean overhead, for each scope."""
    out: dict[str, Any] = {}
    for scope in ("round_1", "mean_rounds_2_to_n", "mean_all_rounds"):
        a, b = plain[scope], fedcommons[scope]
        out[scope] = (
            None
            if a is None or b is None
            else {key: b[key] / a[key] for key in ("wall", "overhead")}
        )
    return out


def render(results: dict[str, Any], console: Console) -> None:
    rounds = Table(title="Per round (seconds)")
    for column in (
        "variant",
        "round",
        "wall",
        "client compute",
        "overhead",
        "val. accuracy",
    ):
        rounds.add_column(column, justify="left" if column == "variant" else "right")
    for variant in ("plain", "fedcommons"):
        for r in results[variant]["rounds"]:
            cells = [r["wall"], r["compute"], r["overhead"]]
            rounds.add_row(
                variant,
                str(r["round"]),
                *(f"{value:.2f}" for value in cells),
                f"{r['accuracy']:.3f}",
            )
    console.print(rounds)

    summary = Table(title="Summary (mean seconds per round)")
    for column in ("variant", "scope", "n", "wall", "client compute", "overhead"):
        summary.add_column(column, justify="left" if column in ("variant", "scope") else "right")
    for scope in ("round_1", "mean_rounds_2_to_n", "mean_all_rounds"):
        for variant in ("plain", "fedcommons"):
            m = results[variant][scope]
            if m is not None:
                cells = [m["wall"], m["compute"], m["overhead"]]
                summary.add_row(variant, scope, str(m["rounds"]), *(f"{v:.2f}" for v in cells))
    console.print(summary)
    for scope, ratio in results["ratio_fedcommons_over_plain"].items():
        if ratio is not None:
            console.print(
                f"(b)/(a) {scope}: wall {ratio['wall']:.3f}, overhead {ratio['overhead']:.3f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds per variant")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = parser.parse_args(argv)

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="round-latency-"))).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        parser.error(f"--workdir {workdir} is not empty")
    console = Console()
    console.print(f"workdir: {workdir}")
    policy = Policy()
    policy = replace(policy, federation=replace(policy.federation, rounds=args.rounds))

    # Fill the page cache first so neither variant pays for the first torch import.
    subprocess.run([sys.executable, "-c", "import torch, flwr"], check=True)

    started = time.monotonic()
    console.print(f"(a) plain Flower FedAvg, {args.rounds} rounds ...")
    plain = summarise(run_plain(workdir / "plain", policy, args.timeout))
    plain["seconds_total"] = time.monotonic() - started

    started = time.monotonic()
    console.print(f"(b) FedCommons, {args.rounds} rounds ...")
    fedcommons = summarise(run_fedcommons(workdir / "fedcommons", policy))
    fedcommons["seconds_total"] = time.monotonic() - started

    import flwr
    import torch

    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "flwr": flwr.__version__,
            "torch": torch.__version__,
        },
        "rounds": args.rounds,
        "definitions": {
            "wall": "(a) t_r - t_{r-1} of evaluate_fn timestamps; (b) ledger rounds.seconds",
            "compute": "max over clients of train-seconds in that round",
            "overhead": "wall - compute",
            "round_1": "round 1 alone (cold start)",
            "mean_rounds_2_to_n": "mean over rounds 2..N (round 1 excluded)",
            "mean_all_rounds": "mean over rounds 1..N",
        },
        "plain": plain,
        "fedcommons": fedcommons,
    }
    results["ratio_fedcommons_over_plain"] = ratios(plain, fedcommons)
    render(results, console)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    console.print(f"results written to {args.out}")
    if args.workdir is None:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

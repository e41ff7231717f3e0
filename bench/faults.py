"""Fault injection: random ``kill -9`` of SuperNodes and of the SuperLink over one run.

Two runs of the same policy in fresh folders, each with the demo's
consortium (three institutions, TLS, SuperNode authentication, sealed
updates, DP with budget-safe planning) on real Flower processes:

(a) fault-free -- submitted and followed to its end;
(b) faulty     -- the same, with a seeded random schedule of faults, each at
               a random moment (0-8 s) into a random round:

               * ``node``: ``kill -9`` of one SuperNode's process group (the
                 node and its ClientApp), restarted 5 s later (the machine
                 reboots); the round goes on with the quorum;
               * ``server``: ``kill -9`` of the SuperLink, its SuperExec and
                 the ServerApp; every process is stopped, then the run is
                 resumed as ``fedcommons demo --resume`` does (a fresh
                 SuperLink and SuperNodes, ``prepare_resume``, a new Flower
                 run from the last recorded round).

The SuperNodes outlive a server crash, as they would on their own
machines: the ClientApps of the round in flight finish (and charge that
round) before the federation is restarted for the resume.

Reported:

* rounds redone per server crash: the round in flight minus the first
  round the resumed Flower run trained, plus one (the goal: at most 1);
* rounds trained but not in the model, per institution: DP-SGD steps in its
  own accountant over the steps of one round, minus the recorded rounds
  its update is in; beyond the rounds in flight means minus one per server
  crash (the goal: 0). A node killed mid-training charges nothing, since
  its accountant is saved only after training;
* epsilon: what each institution spent on each crash's round in flight
  (its accountant after its ClientApp ended, minus the ledger's charge
  after the last recorded round), and each institution's final epsilon in
  (b) minus (a), the epsilon spent beyond a fault-free run (the goal: 0;
  planning derives the remaining rounds' noise from what is left);
* extra wall time: (b) minus (a), first process start to the run's end;
* start-up: from starting the processes (and, for a resume, its checks) to
  the first round's training, i.e. when that round was recorded minus its
  own ``seconds``; the goal is resume start-up <= 2x the fresh start-up.

Usage::

    python bench/faults.py --rounds 6 --node-kills 2 --server-kills 1 --seed 3
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import write_record  # noqa: E402  (bench/record.py)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from client.accountant import list_histories  # noqa: E402
from common.policy import Policy  # noqa: E402
from fedcommons.demo_setup import DemoConsortium, demo_consortium, started_federation  # noqa: E402
from fedcommons.local_federation import LocalFederation, NodeSpec  # noqa: E402
from ledger import Ledger  # noqa: E402
from ledger.report import ledger_report  # noqa: E402
from server.operator.follow import RoundProgress, follow_run, submit_run  # noqa: E402
from server.operator.operate import prepare_resume  # noqa: E402

REBOOT_SECONDS = 5.0
LATEST_KILL = 8.0  # a fault strikes 0..LATEST_KILL seconds into its round


@dataclass
class Fault:
    """One scheduled fault and, once it struck, what it hit."""

    kind: Literal["node", "server"]
    round: int
    delay: float
    target: str = ""
    struck_in_round: int = 0
    """The round in flight when it struck (the round after the last recorded one)."""
    resumed_from: int = 0
    """For a server crash: the first round the resumed Flower run trained."""
    in_flight_epsilon: dict[str, float] = field(default_factory=dict)
    """For a server crash: what each institution spent on the round in flight (its
    accountant's epsilon once its ClientApp ended, minus the epsilon after the last
    recorded round)."""


@dataclass
class Attempt:
    """One Flower run carrying (part of) the ledger run."""

    flower_run_id: int
    startup: float
    """Seconds to the first round's training (NaN: crashed before any round was recorded)."""


class _ServerCrashed(Exception):
    """Raised from the follower's check once the SuperLink was killed."""


def schedule(
    rounds: int, node_kills: int, server_kills: int, institutions: list[str], seed: int
) -> list[Fault]:
    """Random faults in rounds 2..rounds-1 (a server crash in the last round redoes it too)."""
    rng = random.Random(seed)
    if node_kills + server_kills > rounds - 1:
        raise SystemExit(f"{node_kills + server_kills} faults do not fit in {rounds} rounds")
    chosen = rng.sample(range(2, rounds + 1), node_kills + server_kills)
    kinds: list[Literal["node", "server"]] = ["node"] * node_kills
    kinds += ["server"] * server_kills
    rng.shuffle(kinds)
    faults = [
        Fault(kind, number, round(rng.uniform(0.0, LATEST_KILL), 2),
              rng.choice(institutions) if kind == "node" else "superlink")
        for kind, number in zip(kinds, chosen, strict=True)
    ]  # fmt: skip
    return sorted(faults, key=lambda f: f.round)


def _accountant_figures(demo: DemoConsortium) -> dict[str, tuple[float, int]]:
    """Each institution's (epsilon, DP-SGD steps) from its own accountant file."""
    figures = {}
    for node in demo.nodes:
        assert node.state_dir is not None
        (history,) = list_histories(node.state_dir)
        figures[node.institution] = (history.epsilon(), history.steps)
    return figures


def _ledger_run(url: str) -> dict[str, Any]:
    ledger = Ledger(url, migrate=False)
    try:
        with ledger.session() as session:
            (run,) = ledger_report(session)["runs"]
    finally:
        ledger.close()
    return dict(run)


def _follow(
    federation: LocalFederation,
    ledger: Ledger,
    flower_run_id: int,
    started: float,
    check: Callable[[list[RoundProgress]], None] | None,
    startup: list[float],
    after: int = 0,
) -> list[RoundProgress]:
    """Follow a Flower run to its end; its start-up goes to ``startup`` (see the module doc).

    ``after``: rounds an earlier Flower run recorded (not this run's start-up).
    """

    recorded: list[RoundProgress] = []  # the ledger run's rounds, as follow_run reads them

    def on_round(progress: RoundProgress) -> None:
        recorded.append(progress)
        if progress.round > after and not startup:
            startup.append(time.monotonic() - progress.seconds - started)

    def poll() -> None:
        federation.check_alive()
        if check is not None:
            check(recorded)

    return follow_run(
        federation.cli, ledger, flower_run_id, on_round=on_round, check=poll, poll=0.3
    ).rounds


def _wait_for_client_apps(federation: LocalFederation, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and federation.tree.running(b"flwr-clientapp"):
        time.sleep(0.5)


def fault_free(workdir: Path, policy: Policy) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'ledger.db'}"
    demo = demo_consortium(workdir, policy, url)
    ledger = Ledger(url)
    started = time.monotonic()
    try:
        with started_federation(demo, policy) as federation:
            flower_run_id = submit_run(federation.cli, policy, workdir / "run")
            startup: list[float] = []
            rounds = _follow(federation, ledger, flower_run_id, started, None, startup)
    finally:
        ledger.close()
    return {
        "wall": time.monotonic() - started,
        "startup": startup[0],
        "rounds": [r.round for r in rounds],
        "accuracy": rounds[-1].accuracy,
        "accountants": _accountant_figures(demo),
        "run": _ledger_run(url),
    }


class Injector:
    """Strikes the scheduled faults as the rounds go by; restarts killed nodes."""

    def __init__(self, faults: list[Fault], nodes: list[NodeSpec], console: Console) -> None:
        self.pending = list(faults)
        self.nodes = {node.institution: node for node in nodes}
        self.console = console
        self.started = time.monotonic()
        self.rebooting: dict[str, float] = {}
        self.round_seen: dict[int, float] = {}

    def new_federation(self) -> None:
        """Every node starts with a new federation; round timing starts afresh."""
        self.rebooting.clear()
        self.round_seen.clear()

    def __call__(self, federation: LocalFederation, rounds: list[RoundProgress]) -> None:
        now = time.monotonic()
        done = max((r.round for r in rounds), default=0)
        self.round_seen.setdefault(done, now)
        for name, when in list(self.rebooting.items()):
            if now >= when:
                federation.restart_node(self.nodes[name])
                del self.rebooting[name]
        if not self.pending or self.pending[0].round > done + 1:
            return
        fault = self.pending[0]
        if fault.round == done + 1 and now - self.round_seen[done] < fault.delay:
            return
        if fault.kind == "node" and rounds and rounds[-1].participants < len(self.nodes):
            return  # another node is not back yet: the quorum of 2 must hold
        self.pending.pop(0)
        fault.struck_in_round = done + 1
        self.console.print(
            f"  {now - self.started:6.1f} s  kill -9 {fault.target} in round {done + 1}"
        )
        if fault.kind == "node":
            federation.crash_node(fault.target)
            self.rebooting[fault.target] = now + REBOOT_SECONDS
            return
        federation.crash_superlink()
        raise _ServerCrashed


def faulty(workdir: Path, policy: Policy, faults: list[Fault], console: Console) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'ledger.db'}"
    demo = demo_consortium(workdir, policy, url)
    snapshots = demo.operator.deploy().snapshot_dir
    ledger = Ledger(url)
    inject = Injector(faults, demo.nodes, console)
    attempts: list[Attempt] = []
    crashed_last: Fault | None = None
    started = time.monotonic()
    try:
        while True:
            attempt_started = time.monotonic()
            inject.new_federation()
            with started_federation(demo, policy) as federation:
                if attempts:
                    run_id = _ledger_run(url)["id"]
                    prepare_resume(ledger, snapshots, int(run_id), federation.cli)
                flower_run_id = submit_run(federation.cli, policy, workdir / "run")
                check = functools.partial(inject, federation)
                startup: list[float] = []
                done = len(_ledger_run(url)["rounds"]) if attempts else 0
                try:
                    rounds = _follow(
                        federation, ledger, flower_run_id, attempt_started, check, startup, done
                    )
                except _ServerCrashed:
                    rounds = []
                    # The SuperNodes outlive a server crash: their ClientApps finish the
                    # round in flight (and charge it) before the machine is restarted.
                    _wait_for_client_apps(federation, 120.0)
                attempts.append(Attempt(flower_run_id, startup[0] if startup else math.nan))
                if attempts[1:] and crashed_last is not None:
                    crashed_last.resumed_from = done + 1
            if rounds:
                break
            crashed_last = next(f for f in faults if f.kind == "server" and not f.in_flight_epsilon)
            run = _ledger_run(url)
            recorded = {r["round"] for r in run["rounds"]}
            after_last: dict[str, float] = {}
            for charge in run["privacy_charges"]:  # in order: the last recorded round's
                if charge["round"] in recorded:
                    after_last[charge["institution"]] = charge["epsilon"]
            crashed_last.in_flight_epsilon = {
                name: epsilon - after_last.get(name, 0.0)
                for name, (epsilon, _) in _accountant_figures(demo).items()
            }
    finally:
        ledger.close()
    return {
        "wall": time.monotonic() - started,
        "attempts": [asdict(a) for a in attempts],
        "rounds": [r.round for r in rounds],
        "accuracy": rounds[-1].accuracy,
        "accountants": _accountant_figures(demo),
        "run": _ledger_run(url),
    }


def summarise(clean: dict[str, Any], hurt: dict[str, Any], faults: list[Fault]) -> dict[str, Any]:
    run = hurt["run"]
    recorded_rounds = [r["round"] for r in run["rounds"]]
    in_model = {
        name: sum(name in {u["institution"] for u in r["updates"]} for r in run["rounds"])
        for name in hurt["accountants"]
    }
    steps_per_round = {c["institution"]: c["steps"] for c in run["privacy_charges"]}
    trained = {
        name: steps / steps_per_round[name] for name, (_, steps) in hurt["accountants"].items()
    }
    not_in_model = {name: trained[name] - in_model[name] for name in trained}
    crashes = [f for f in faults if f.kind == "server"]
    redone = [f.struck_in_round - f.resumed_from + 1 for f in crashes]
    beyond = {
        name: hurt["accountants"][name][0] - clean["accountants"][name][0]
        for name in clean["accountants"]
    }
    resumes = [a["startup"] for a in hurt["attempts"][1:]]
    return {
        "rounds_recorded": recorded_rounds,
        "each_round_once": recorded_rounds == list(range(1, len(clean["rounds"]) + 1)),
        "server_crashes": len(crashes),
        "node_kills": sum(f.kind == "node" for f in faults),
        "rounds_redone_per_crash": redone,
        "rounds_trained_not_in_model": not_in_model,
        "rounds_wasted_beyond_in_flight": {
            name: wasted - len(crashes) for name, wasted in not_in_model.items()
        },
        "epsilon_in_flight_per_crash": [f.in_flight_epsilon for f in crashes],
        "epsilon_beyond_fault_free": beyond,
        "epsilon_final": {n: e for n, (e, _) in hurt["accountants"].items()},
        "epsilon_final_fault_free": {n: e for n, (e, _) in clean["accountants"].items()},
        "epsilon_charged_last": {c["institution"]: c["epsilon"] for c in run["privacy_charges"]},
        "extra_wall": hurt["wall"] - clean["wall"],
        "wall": {"fault_free": clean["wall"], "faulty": hurt["wall"]},
        "fresh_startup": clean["startup"],
        "resume_startups": resumes,
        "resume_over_fresh": [s / clean["startup"] for s in resumes],
        "accuracy": {"fault_free": clean["accuracy"], "faulty": hurt["accuracy"]},
        "round_seconds": {
            "fault_free": [r["seconds"] for r in clean["run"]["rounds"]],
            "faulty": [r["seconds"] for r in run["rounds"]],
        },
        "exclusions": run["exclusions"],
        "flower_runs": run["flower_runs"],
        "status": run["status"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--node-kills", type=int, default=2)
    parser.add_argument("--server-kills", type=int, default=1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=Policy().federation.round_timeout,
        help="seconds a round waits for replies (default: the policy's)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args(argv)
    console = Console()
    policy = Policy().with_overrides(
        {
            "federation.rounds": args.rounds,
            "federation.min-nodes": 2,
            "federation.round-timeout": args.round_timeout,
        }
    )
    institutions = ["company-c", "university-a", "university-b"]
    faults = schedule(args.rounds, args.node_kills, args.server_kills, institutions, args.seed)
    with tempfile.TemporaryDirectory(prefix="fedcommons-faults-") as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        console.print(f"(a) fault-free, {args.rounds} rounds")
        clean = fault_free(root / "fault-free", policy)
        console.print("(b) faults: " + ", ".join(f"{f.target} in round {f.round}" for f in faults))
        hurt = faulty(root / "faulty", policy, faults, console)
    summary = summarise(clean, hurt, faults)
    table = Table(title="fault injection")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("faults (node kills / server crashes)",
                  f"{summary['node_kills']} / {summary['server_crashes']}")  # fmt: skip
    table.add_row("rounds recorded, each once", str(summary["each_round_once"]))
    table.add_row("rounds redone per server crash",
                  ", ".join(map(str, summary["rounds_redone_per_crash"])))  # fmt: skip
    not_in_model = summary["rounds_trained_not_in_model"]
    table.add_row("rounds trained, not in the model (per institution)",
                  ", ".join(f"{n} {v:g}" for n, v in sorted(not_in_model.items())))  # fmt: skip
    beyond_flight = max(summary["rounds_wasted_beyond_in_flight"].values())
    table.add_row("of which beyond the rounds in flight (max)", f"{beyond_flight:g}")
    in_flight = [max(w.values()) for w in summary["epsilon_in_flight_per_crash"]]
    table.add_row("epsilon spent on the round in flight (max)",
                  ", ".join(f"{w:.3f}" for w in in_flight))  # fmt: skip
    beyond = max(summary["epsilon_beyond_fault_free"].values())
    table.add_row("epsilon beyond the fault-free run (max)", f"{beyond:+.3f}")
    table.add_row("extra wall time", f"{summary['extra_wall']:.1f} s")
    table.add_row("fresh start-up", f"{summary['fresh_startup']:.1f} s")
    table.add_row(
        "resume start-up (x fresh)",
        ", ".join(f"{s:.1f} s ({r:.2f}x)" for s, r in
                  zip(summary["resume_startups"], summary["resume_over_fresh"], strict=True)),
    )  # fmt: skip
    table.add_row("validation accuracy (fault-free / faulty)",
                  f"{clean['accuracy']:.3f} / {hurt['accuracy']:.3f}")  # fmt: skip
    console.print(table)
    write_record(
        args.out,
        summary=summary,
        faults=[asdict(f) for f in faults],
        fault_free={k: v for k, v in clean.items() if k != "run"},
        faulty={k: v for k, v in hurt.items() if k != "run"},
    )
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

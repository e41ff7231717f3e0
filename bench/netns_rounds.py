"""Round wall time across namespaced hosts vs loopback, and the role commands' start-up time.

Runs ``deploy/netns-test.sh`` (five hosts in network namespaces, the ledger
on PostgreSQL) and then ``fedcommons demo`` with the same policy, the same
data split and a PostgreSQL ledger on loopback, where the same role commands
start the same processes on one network stack. Round seconds come from each
run's ledger rows (``rounds.seconds``, measured by the ServerApp); start-up
times from the script (launch to listening, launch to "SuperNode ID" in the
node's log). Writes ``bench/results/netns_rounds.json``.

    python bench/netns_rounds.py [--rounds 3]

Needs root (network namespaces) and PostgreSQL on its Unix socket.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_record  # bench/record.py

ROOT = Path(__file__).resolve().parent.parent
SOCKET = "/var/run/postgresql"


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _netns(work: Path, rounds: int) -> dict[str, Any]:
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "netns-test.sh"), str(work)],
        env={**_env(), "NETNS_ROUNDS": str(rounds)},
        check=True,
    )
    summary = json.loads((work / "operator" / "run-summary.json").read_text())
    timings = json.loads((work / "timings.json").read_text())
    return {"rounds": [r["seconds"] for r in summary["rounds"]], **timings}


def _loopback(work: Path, rounds: int) -> list[float]:
    database = f"fedcommons_bench_loopback_{os.getpid()}"
    psql = ["psql", "-q", "-h", SOCKET, "-U", "postgres", "-d", "postgres", "-c"]
    subprocess.run([*psql, f"CREATE DATABASE {database}"], check=True)
    try:
        work.mkdir(parents=True, exist_ok=True)
        policy = work / "policy.toml"
        policy.write_text(
            f"[federation]\nrounds = {rounds}\nmin-nodes = 3\nround-timeout = 300.0\n"
        )
        subprocess.run(
            [
                "fedcommons", "demo", "--policy", str(policy), "--workdir", str(work / "demo"),
                "--ledger-url", f"postgresql://postgres@/{database}?host={SOCKET}",
            ],
            env=_env(),
            check=True,
        )  # fmt: skip
        summary = json.loads((work / "demo" / "summary.json").read_text())
        return [float(r["seconds"]) for r in summary["rounds"]]
    finally:
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {database}"], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-netns-") as folder:
        netns = _netns(Path(folder) / "netns", args.rounds)
        loopback = _loopback(Path(folder) / "loopback", args.rounds)
    ratio = mean(netns["rounds"]) / mean(loopback)
    print(f"round seconds, namespaced hosts: {netns['rounds']}")
    print(f"round seconds, loopback:         {loopback}")
    print(f"mean ratio namespaced / loopback: {ratio:.2f}")
    print(f"operator serve: {netns['operator_serve_seconds']:.2f} s to listen")
    for name, seconds in netns["client_start_seconds"].items():
        print(f"client start ({name}): {seconds:.2f} s to connect")
    write_record(
        ROOT / "bench" / "results" / "netns_rounds.json",
        rounds=args.rounds,
        netns_round_seconds=netns["rounds"],
        loopback_round_seconds=loopback,
        ratio=ratio,
        operator_serve_seconds=netns["operator_serve_seconds"],
        client_start_seconds=netns["client_start_seconds"],
    )


if __name__ == "__main__":
    main()

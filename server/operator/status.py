"""``operator status``: which institutions' SuperNodes are connected, the runs, their last round.

Flower knows node ids and whether each is online; the ledger knows runs and
rounds; which node id is which institution is noted in the operator folder
(``supernodes.json``) when ``operator admit`` registers a node's key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from common.atomic import write_atomic
from ledger import Ledger
from ledger.report import ledger_report
from server.deploy import OperatorFiles
from server.operator.flower import FlwrCli

__all__ = ["NodeNames", "consortium_status", "registrar", "status_tables"]


@dataclass(frozen=True)
class NodeNames:
    """Flower node id -> institution, kept in the operator folder as ``supernodes.json``."""

    path: Path

    @classmethod
    def of(cls, files: OperatorFiles) -> NodeNames:
        return cls(files.root / "supernodes.json")

    def read(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        doc = json.loads(self.path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

    def note(self, node_id: int, institution: str) -> None:
        names = self.read()
        names[str(node_id)] = institution
        write_atomic(self.path, json.dumps(names, indent=2, sort_keys=True) + "\n")


def registrar(files: OperatorFiles, cli: FlwrCli) -> Callable[[Path, str], int]:
    """Registers a SuperNode key with the SuperLink and notes which institution it is."""

    def register(key: Path, institution: str) -> int:
        node_id = cli.register_node(key, institution)
        NodeNames.of(files).note(node_id, institution)
        return node_id

    return register


def consortium_status(files: OperatorFiles, cli: FlwrCli) -> dict[str, Any]:
    """Nodes by institution (from the SuperLink), and runs with their last round (ledger + Flower).

    The SuperLink must be running (:class:`~server.operator.flower.FederationError` otherwise).
    """
    names = NodeNames.of(files).read()
    nodes = [
        {
            "institution": names.get(str(node["node-id"]), "(not admitted here)"),
            "node_id": str(node["node-id"]),
            "status": node["status"],
            "since": node.get("online-at")
            if node["status"] == "online"
            else node.get("offline-at"),
        }
        for node in cli.json("supernode", "list", cli.connection)["nodes"]
    ]
    flower = {str(r["run-id"]): r["status"] for r in cli.json("ls", cli.connection)["runs"]}
    ledger = Ledger(files.deploy().ledger_url, migrate=False)
    try:
        with ledger.session() as session:
            recorded = ledger_report(session)["runs"]
    finally:
        ledger.close()
    runs = []
    for run in recorded:
        rounds = run["rounds"]
        last = rounds[-1] if rounds else None
        carriers = [
            str(f["flower_run_id"]) for f in run["flower_runs"] if f["flower_run_id"] is not None
        ]
        runs.append(
            {
                "run_id": run["id"],
                "status": run["status"],
                "flower_runs": {c: flower.get(c, "(not in this SuperLink)") for c in carriers},
                "rounds": len(rounds),
                "planned_rounds": run["planned_rounds"],
                "last_round": None if last is None else last["round"],
                "last_accuracy": None if last is None else last["accuracy"],
            }
        )
    return {"nodes": nodes, "runs": runs}


def status_tables(found: dict[str, Any]) -> tuple[Table, Table]:
    """:func:`consortium_status` for people: a table of nodes, one of runs."""
    nodes = Table(title="SuperNodes")
    for column in ("institution", "node id", "status", "since"):
        nodes.add_column(column)
    for node in found["nodes"]:
        nodes.add_row(node["institution"], node["node_id"], node["status"], node["since"] or "")
    runs = Table(title="Runs")
    for column in ("run", "status", "Flower runs", "rounds", "last round", "accuracy"):
        runs.add_column(column)
    for run in found["runs"]:
        accuracy = run["last_accuracy"]
        runs.add_row(
            str(run["run_id"]),
            run["status"],
            ", ".join(f"{k} ({v})" for k, v in run["flower_runs"].items()),
            f"{run['rounds']}/{run['planned_rounds']}",
            "-" if run["last_round"] is None else str(run["last_round"]),
            "-" if accuracy is None else f"{accuracy:.2%}",
        )
    return nodes, runs

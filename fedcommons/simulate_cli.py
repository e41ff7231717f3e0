"""``fedcommons simulate``: size a consortium on one machine with Flower's Simulation Engine."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from common.epsilon import format_epsilon
from common.output import literal_console
from common.policy import Policy
from fedcommons.demo_cli import interrupt_on_sigterm, summary_rounds
from fedcommons.simulation import run_simulation, virtual_institutions
from server.operator.progress import round_bar, rounds_table

__all__ = ["app", "simulate"]


def simulate(
    institutions: Annotated[
        int, typer.Option(help="Virtual institutions, each with its own data, keys and budget.")
    ],
    industry_share: Annotated[
        float, typer.Option(help="Fraction of them that are companies (industry).")
    ] = 0.3,
    rounds: Annotated[
        int | None, typer.Option(help="Federated rounds (default: the policy's).")
    ] = None,
    partition: Annotated[
        str | None, typer.Option(help="iid or non-iid (Dirichlet label skew; default: policy's).")
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(help="Dirichlet concentration for non-iid (smaller: more skewed)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for data split and model (default: the policy's).")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Privacy budget per institution (default: policy's).")
    ] = None,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="TOML policy file (default: built-in).")
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="Folder for data, state, ledger and summary.json.")
    ] = Path("fedcommons-simulation"),
    ledger_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite file in the work folder).")
    ] = None,
    client_cpus: Annotated[
        int, typer.Option(help="CPUs Ray gives each ClientApp (fewer: more run at once).")
    ] = 1,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Control API without TLS (loopback only).")
    ] = False,
) -> None:
    """Run the product's own ServerApp and ClientApp with N virtual institutions.

    Each institution gets its share of the data, enrols from its own state
    folder and is admitted; Flower's Simulation Engine (Ray) plays their
    SuperNodes. Updates are sealed and signed, DP is accounted per
    institution, every round is in the ledger and every receipt is checked.
    """
    try:
        virtual_institutions(institutions, industry_share)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if client_cpus < 1:
        raise typer.BadParameter(f"--client-cpus must be at least 1, got {client_cpus}")
    policy = (Policy.load(policy_file) if policy_file else Policy()).with_overrides(
        {
            "federation.rounds": rounds,
            "federation.seed": seed,
            "data.partition": partition,
            "data.dirichlet-alpha": alpha,
            "privacy.epsilon": epsilon,
        },
        source="the command-line options",
    )
    console = literal_console()
    privacy = policy.privacy
    guarantee = (
        Text(f"DP ε ≤ {privacy.epsilon:g}, δ = {privacy.delta:g} per institution")
        if privacy.dp
        else Text("DP OFF (policy says dp = false)", "yellow")
    )
    console.print(
        Text.assemble(
            ("FedCommons simulation", "bold"),
            f": {institutions} virtual institutions, {policy.model.name} on "
            f"{policy.data.dataset}, {policy.data.partition}, {policy.federation.rounds} "
            "rounds, ",
            guarantee,
            f", work folder {workdir}",
        )
    )
    interrupt_on_sigterm()
    try:
        with round_bar(console, policy.federation.rounds) as on_round:
            summary = run_simulation(
                workdir,
                policy,
                institutions=institutions,
                industry_share=industry_share,
                client_cpus=client_cpus,
                ledger_url=ledger_url,
                on_round=on_round,
                insecure=insecure,
            )
    except KeyboardInterrupt:
        console.print(Text("interrupted: every process started was stopped", "yellow"))
        raise typer.Exit(code=130) from None

    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for inst in summary["institutions"]:
        by_kind[inst["kind"]].append(inst)
    table = Table(title="Institutions by kind")
    for column in ("kind", "count", "examples", "max ε spent", "contribution share"):
        table.add_column(column, justify="right")
    for kind, members in sorted(by_kind.items()):
        spent = [float(m["epsilon"]) for m in members if m["epsilon"] is not None]
        share = sum(summary["contributions"].get(m["name"], 0.0) for m in members)
        table.add_row(
            kind,
            str(len(members)),
            str(sum(m["examples"] for m in members)),
            format_epsilon(max(spent)) if spent else "-",
            f"{share:.1%}",
        )
    console.print(table)
    console.print(rounds_table(summary_rounds(summary)))
    console.print(
        Text.assemble(
            "final test accuracy ",
            (f"{summary['final_accuracy']:.2%}", "bold"),
            f" in {summary['wall_seconds']:.0f}s; ledger verified with {summary['receipts']} "
            f"receipts; summary {workdir / 'summary.json'}",
        )
    )


app = typer.Typer(add_completion=False)
app.command("simulate", no_args_is_help=True)(simulate)

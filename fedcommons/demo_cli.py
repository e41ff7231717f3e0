"""``fedcommons demo``: the whole federation on this machine, on real Flower processes."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from client.supernode import ISOLATIONS
from common.epsilon import format_epsilon
from common.output import literal_console
from common.policy import MODELS, Policy, PolicyError
from fedcommons.demo import run_demo, unfinished_run
from fedcommons.demo_setup import prepare_data, with_model
from fedcommons.startup import STALL_SHARE, STARTUP_TIMEOUT
from server.operator.follow import RoundProgress
from server.operator.progress import round_bar, rounds_table

__all__ = ["app", "demo", "interrupt_on_sigterm", "summary_rounds"]


def interrupt_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def demo(
    rounds: Annotated[
        int | None, typer.Option(help="Federated rounds (default: the policy's).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="cnn (digits) or bert (pretrained MiniLM on standard-library docstrings; "
            "switches the data and training settings too)."
        ),
    ] = None,
    partition: Annotated[
        str | None, typer.Option(help="iid or non-iid (Dirichlet label skew).")
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="Folder for data, logs, ledger and summary.json.")
    ] = Path("fedcommons-demo"),
    ledger_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite file in the work folder).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for data split and model (default: the policy's).")
    ] = None,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="TOML policy file (default: built-in).")
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(
            help="Privacy budget per institution and dataset (default: the policy's, 8). "
            "DP is turned off only by 'dp = false' in a policy file."
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Turn OFF TLS and SuperNode authentication (not recommended; updates stay "
            "encrypted and signed).",
        ),
    ] = False,
    data_only: Annotated[
        bool,
        typer.Option(
            "--data-only",
            help="Only write each institution's share of the data and the operator's "
            "validation and test splits into the work folder, then stop (to try the "
            "role commands by hand, on one machine or several).",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the work folder's unfinished run (after a crash or Ctrl-C) from its "
            "last recorded round, with its own policy.",
        ),
    ] = False,
    isolation: Annotated[
        str,
        typer.Option(
            help="warm: each node's ClientApps are forked by a runner that loaded torch and "
            "the base model once; subprocess: Flower starts each ClientApp from scratch.",
        ),
    ] = "warm",
    startup_timeout: Annotated[
        float,
        typer.Option(
            help="The most seconds each Flower process may take to start listening; one that "
            f"exits, or uses no CPU for {STALL_SHARE:.0%} of it, fails sooner. Raise it on a "
            "busy machine.",
        ),
    ] = STARTUP_TIMEOUT,
) -> None:
    """Train a CNN (or BERT) across three institutions on real Flower SuperLink/SuperNodes.

    The operator's consortium is created and the three institutions enrol
    and are admitted first; the SuperLink then runs with TLS and admits only
    their registered SuperNodes, and every update is encrypted and signed.
    """
    console = literal_console()
    given = {"--rounds": rounds, "--model": model, "--partition": partition, "--seed": seed,
             "--policy": policy_file, "--epsilon": epsilon}  # fmt: skip
    if resume and any(value is not None for value in given.values()):
        options = ", ".join(name for name, value in given.items() if value is not None)
        raise typer.BadParameter(
            f"--resume continues the run with the policy it recorded; leave out {options}",
            param_hint="--resume",
        )
    if isolation not in ISOLATIONS:
        raise typer.BadParameter(
            f"--isolation is {' or '.join(ISOLATIONS)}, not {isolation!r}", param_hint="--isolation"
        )
    if startup_timeout <= 0:
        raise typer.BadParameter(
            f"--startup-timeout is seconds, more than 0, not {startup_timeout:g}",
            param_hint="--startup-timeout",
        )
    policy = Policy.load(policy_file) if policy_file else Policy()
    if resume:  # shown as the run recorded it
        url = ledger_url or f"sqlite:///{workdir.resolve() / 'ledger.db'}"
        run_id, policy = unfinished_run(workdir.resolve(), url)
        console.print(Text.assemble((f"resuming run {run_id}", "bold"), f" in {workdir}"))
    if model is not None:
        if model not in MODELS:
            raise PolicyError(
                f"policy key 'model.name' must be one of: {', '.join(MODELS)}, got {model!r} "
                "(from the command-line options)"
            )
        policy = with_model(policy, model)
    policy = policy.with_overrides(
        {
            "federation.rounds": rounds,
            "federation.seed": seed,
            "data.partition": partition,
            "privacy.epsilon": epsilon,
        },
        source="the command-line options",
    )
    if data_only:
        layout = prepare_data(workdir, policy)
        table = Table(title=f"Data written into {workdir}")
        table.add_column("party")
        table.add_column("examples")
        table.add_column("folder")
        for node in layout.nodes:
            table.add_row(
                node.institution, str(layout.examples[node.institution]), str(node.data_dir)
            )
        table.add_row("operator (validation, test)", "", str(layout.server_data_dir))
        console.print(table)
        return
    if insecure:
        console.print(
            Text(
                "WARNING: --insecure: the SuperLink runs WITHOUT TLS and accepts any SuperNode. "
                "Use it only to debug on one machine.",
                "bold yellow",
            )
        )
    interrupt_on_sigterm()
    privacy = policy.privacy
    guarantee = (
        Text(f"DP ε ≤ {privacy.epsilon:g}, δ = {privacy.delta:g} per institution")
        if privacy.dp
        else Text("DP OFF (policy says dp = false): ε = ∞", "yellow")
    )
    console.print(
        Text.assemble(
            ("FedCommons demo", "bold"),
            f": {policy.model.name} on {policy.data.dataset}, {policy.data.partition}, "
            f"{policy.federation.rounds} rounds, ",
            guarantee,
            f", work folder {workdir}",
        )
    )
    try:
        with round_bar(console, policy.federation.rounds) as on_round:
            summary = run_demo(
                workdir,
                policy,
                ledger_url=ledger_url,
                on_round=on_round,
                insecure=insecure,
                resume=resume,
                isolation=isolation,
                startup_timeout=startup_timeout,
            )
    except KeyboardInterrupt:
        console.print(
            Text(
                "interrupted: every Flower process started was stopped; the run is recorded as "
                "interrupted and 'fedcommons demo --resume' continues it",
                "yellow",
            )
        )
        raise typer.Exit(code=130) from None

    table = Table(title="Institutions")
    for column in ("institution", "kind", "examples", "ε spent", "contribution share"):
        table.add_column(column)
    for inst in summary["institutions"]:
        eps = inst["epsilon"]
        share = summary["contributions"].get(inst["name"])
        table.add_row(
            inst["name"],
            inst["kind"],
            str(inst["examples"]),
            "-" if eps is None else format_epsilon(float(eps)),
            "-" if share is None else f"{share:.1%}",
        )
    console.print(table)
    console.print(rounds_table(summary_rounds(summary)))
    console.print(
        Text.assemble(
            "final test accuracy ",
            (f"{summary['final_accuracy']:.2%}", "bold"),
            f" in {summary['wall_seconds']:.0f}s; ledger {summary['ledger_url']}; "
            f"summary {workdir / 'summary.json'}",
        )
    )


def summary_rounds(summary: dict[str, Any]) -> list[RoundProgress]:
    return [
        RoundProgress(
            round=r["round"],
            accuracy=r["accuracy"],
            loss=r["loss"],
            participants=r["participants"],
            seconds=r["seconds"],
            epsilon={k: float(v) for k, v in r["epsilon"].items()},
        )
        for r in summary["rounds"]
    ]


app = typer.Typer(add_completion=False)
app.command("demo", no_args_is_help=False)(demo)

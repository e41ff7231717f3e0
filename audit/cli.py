"""``fedcommons audit ...``: read-only views of the ledger for auditors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.table import Table
from rich.text import Text

from audit.card_cli import card, print_verdict, verify_releases
from audit.compare import compare_folders, operator_and_origin
from common.consortium import Consortium
from common.output import OutputFormat, literal_console
from common.receipts import read_receipts
from ledger import SUSPECTED, Ledger, contributions_report
from ledger.report import ledger_report
from ledger.schema import Run
from ledger.verify import LedgerTampered, verify_ledger

__all__ = ["app"]

app = typer.Typer(
    help="Read-only views of the ledger, for auditors.", no_args_is_help=True, add_completion=False
)
app.command("compare")(compare_folders)
app.command("card")(card)


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="text (for people) or json.")]


@app.command("verify")
def verify(
    ledger_url: Annotated[str, typer.Option("--ledger", help="SQLAlchemy URL of the ledger.")],
    operator_key: Annotated[
        str | None,
        typer.Option(
            help="The operator's key: base64, or the consortium.json that holds it. "
            "Needed to check the signatures of the ledger's tree heads."
        ),
    ] = None,
    skip_signatures: Annotated[
        bool,
        typer.Option(
            "--skip-signatures",
            help="Verify without the operator's key: everything but the tree heads' "
            "signatures (the result says so).",
        ),
    ] = False,
    receipts: Annotated[
        list[Path] | None,
        typer.Option(
            "--receipts",
            help="A folder of participants' receipts (*.json, searched recursively; a "
            "node's sent/ and refused/ are skipped), repeatable: each must still agree "
            "with the ledger.",
        ),
    ] = None,
    releases: Annotated[
        Path | None,
        typer.Option(
            "--releases",
            help="A folder of releases: every model-card.json under it is checked against "
            "the consortium and this ledger, as 'audit card' does (needs consortium.json).",
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Recompute every entry, the hash chain and the Merkle tree; check every fact row,
    signed tree head, participant cosignature and receipt.

    Read-only. Exit 0, an "intact" line and, per signed tree head, the
    participants that cosigned it, if every check ran and held;
    exit 1 and the first bad entry otherwise. Without --operator-key it
    refuses (exit 2) unless --skip-signatures says to verify the rest.
    With --releases, exit 1 also when a card is refused.
    """
    if operator_key is None and not skip_signatures:
        raise typer.BadParameter(
            "give the operator's key (consortium.json or base64) to check the tree heads' "
            "signatures, or --skip-signatures to verify everything else without them",
            param_hint="--operator-key",
        )
    if operator_key is not None and skip_signatures:
        raise typer.BadParameter(
            "--skip-signatures and --operator-key contradict each other",
            param_hint="--skip-signatures",
        )
    operator = _operator_key(operator_key) if operator_key else None
    held = [(str(path), r) for folder in receipts or [] for path, r in read_receipts(folder)]
    ledger = Ledger(ledger_url, migrate=False)
    try:
        report = verify_ledger(ledger, operator, held)
    except LedgerTampered as err:
        if output_format is OutputFormat.json:
            typer.echo(
                json.dumps(
                    {"intact": False, "seq": err.seq, "kind": err.kind, "detail": err.detail}
                )
            )
        else:
            literal_console(stderr=True).print(
                Text.assemble(("NOT INTACT", "bold red"), f" {err}"), highlight=False
            )
        raise typer.Exit(code=1) from None
    finally:
        ledger.close()
    cards = verify_releases(ledger_url, operator_key, releases) if releases else []
    if output_format is OutputFormat.json:
        complete = report.signatures_checked
        unchecked = [] if complete else ["tree-head signatures"]
        shown = {"releases": [c.to_dict() for c in cards]} if releases else {}
        typer.echo(
            json.dumps({"intact": complete, "unchecked": unchecked, **asdict(report), **shown})
        )
    else:
        typer.echo(report.summary())
        for line in report.witness_lines():
            typer.echo(f"  {line}")
        for checked in cards:
            print_verdict(checked)
    if any(c.verdict.status != "verified" for c in cards):
        raise typer.Exit(code=1)


def _operator_key(value: str) -> Ed25519PublicKey:
    return operator_and_origin(value)[0]


@app.command("show")
def show(
    ledger_url: Annotated[str, typer.Option("--ledger", help="SQLAlchemy URL of the ledger.")],
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Participants (and who is suspended), runs and rounds recorded in the ledger."""
    ledger = Ledger(ledger_url, migrate=False)
    try:
        with ledger.session() as session:
            report = ledger_report(session)
    finally:
        ledger.close()
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = literal_console()
    people = Table(title="Participants")
    for column in ("name", "kind", "enrolled", "status"):
        people.add_column(column)
    for p in report["participants"]:
        people.add_row(p["name"], p["kind"], p["enrolled_at"], _standing(p))
    console.print(people)
    if report["suspensions"]:
        decisions = Table(title="Suspensions and reinstatements (each applies to later runs)")
        for column in ("institution", "action", "at", "entry", "reason"):
            decisions.add_column(column)
        for d in report["suspensions"]:
            decisions.add_row(
                d["institution"], d["action"], d["at"], str(d["entry_seq"]), d["reason"]
            )
        console.print(decisions)
    privacy = Table(title="Privacy spent (cumulative ε per institution and dataset)")
    for column in ("institution", "dataset", "ε", "δ", "accountant", "rounds charged"):
        privacy.add_column(column)
    for row in report["privacy"]:
        eps = row["epsilon"]
        privacy.add_row(
            row["institution"], row["dataset_sha256"][:12] + "…",
            "∞ (DP off)" if eps == "inf" else f"{eps:.3f}", f"{row['delta']:g}",
            row["accountant"], str(row["rounds_charged"]),
        )  # fmt: skip
    console.print(privacy)
    for run in report["runs"]:
        table = Table(
            title=f"Run {run['id']} (Flower {run['flower_run_id']}): {run['model']} on "
            f"{run['dataset']}, {run['status']}, test accuracy {_pct(run['test_accuracy'])}"
        )
        for column in (
            "round",
            "accuracy",
            "loss",
            "participants",
            "seconds",
            "global model sha256",
        ):
            table.add_column(column)
        for r in run["rounds"]:
            table.add_row(
                str(r["round"]), _pct(r["accuracy"]), f"{r['loss']:.4f}",
                str(r["participants"]), f"{r['seconds']:.1f}", r["model_sha256_after"][:16] + "…",
            )  # fmt: skip
        console.print(table)
        if len(run["flower_runs"]) > 1:  # resumed: every Flower run that carried it
            carried = ", ".join(
                f"{f['flower_run_id']} from round {f['first_round']}" for f in run["flower_runs"]
            )
            console.print(f"  resumed; Flower runs: {carried}", highlight=False)
        if run["status_reason"]:
            label = "stopped" if run["status"] != "finished" else "note"
            console.print(
                Text.assemble((f"{label}:", "red"), f" {run['status_reason']}"), highlight=False
            )
        for e in run["exclusions"]:
            console.print(
                f"  excluded in round {e['round']}: {e['institution'] or 'node ' + e['node_id']} "
                f"(code {e['code']}): {e['reason']}",
                highlight=False,
            )
        for d in run["defences"]:
            if d["action"] == SUSPECTED:
                console.print(
                    f"  collusion evidence, round {d['round']}: {d['institution']} "
                    f"({d['rule']}): {d['detail']}",
                    highlight=False,
                )
        for release in run["releases"]:
            console.print(
                f"  released model {release['model_sha256'][:16]}… (card "
                f"{release['card_sha256'][:16]}…) to {release['out']}",
                highlight=False,
            )


def _standing(participant: dict[str, Any]) -> str:
    if participant["suspended"]:
        return "suspended"
    return "admitted" if participant["admitted_at"] else "enrolled"


def _evidence_text(evidence: dict[str, list[int]]) -> str:
    """``near-identical (1, 2); zero-weight (2)``, or ``-`` for none."""
    return (
        "; ".join(
            f"{kind} ({', '.join(str(r) for r in rounds)})" for kind, rounds in evidence.items()
        )
        or "-"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


@app.command("contributions")
def contributions(
    ledger_url: Annotated[str, typer.Option("--ledger", help="SQLAlchemy URL of the ledger.")],
    run: Annotated[int | None, typer.Option("--run", help="Only this run (ledger id).")] = None,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Each institution's contribution value per round, and its share of each run.

    Values are in parts per million of validation utility (accuracy by
    default): a coalition's value is how much the model aggregated from its
    updates improved on the round's starting model. ``audit verify``
    recomputes every value from the recorded coalition utilities.
    """
    ledger = Ledger(ledger_url, migrate=False)
    try:
        with ledger.session() as session:
            if run is not None and session.get(Run, run) is None:
                raise typer.BadParameter(f"the ledger has no run {run}", param_hint="--run")
            report = contributions_report(session, run_id=run)
    finally:
        ledger.close()
    if output_format is OutputFormat.json:
        typer.echo(json.dumps({"runs": report}, indent=2))
        return
    console = literal_console()
    for entry in report:
        if not entry["rounds"]:
            console.print(f"Run {entry['run']}: no round was valued", highlight=False)
            continue
        names = [i["name"] for i in sorted(entry["institutions"], key=lambda i: i["name"])]
        table = Table(title=f"Run {entry['run']}: values per round (ppm of utility)")
        for column in ("round", "method", "evaluations", "gain", *names):
            table.add_column(column, justify="right")
        for r in entry["rounds"]:
            table.add_row(
                str(r["round"]), r["method"], str(r["evaluations"]), str(r["gain_ppm"]),
                *(str(r["values_ppm"].get(n, "-")) for n in names),
            )  # fmt: skip
        console.print(table)
        shares = Table(title=f"Run {entry['run']}: cumulative shares, with collusion evidence")
        for column in ("institution", "kind", "value (ppm)", "share", "evidence (rounds)"):
            shares.add_column(column)
        for i in entry["institutions"]:
            shares.add_row(
                i["name"], i["kind"], str(i["value_ppm"]), _pct(i["share"]),
                _evidence_text(i["evidence"]),
            )  # fmt: skip
        for k in entry["kinds"]:
            shares.add_row(f"all {k['name']}", k["name"], str(k["value_ppm"]), _pct(k["share"]), "")
        console.print(shares)


@app.command("serve")
def serve(
    ledger_url: Annotated[str, typer.Option("--ledger", help="SQLAlchemy URL of the ledger.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    operator_key: Annotated[
        str | None,
        typer.Option(
            help="The operator's key (base64 or consortium.json): 'verify now' then checks "
            "the tree heads' signatures too."
        ),
    ] = None,
) -> None:
    """Serve the ledger read-only as web pages and a JSON API, behind operator-issued tokens.

    Every page and /api/ call needs a token ('fedcommons operator token
    issue'); the database connection is read-only. Stop with Ctrl-C.
    """
    import errno
    import socket

    import uvicorn

    from audit.web import create_app

    operator = _operator_key(operator_key) if operator_key else None
    name = origin = None
    if operator_key and (Path(operator_key).suffix == ".json" or Path(operator_key).is_file()):
        consortium = Consortium.load(Path(operator_key))
        name, origin = consortium.name, consortium.origin
    dashboard = create_app(ledger_url, operator, name, origin=origin)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise typer.BadParameter(
            f"cannot listen on {host!r}: not an address or a name this machine resolves "
            f"({err.strerror})",
            param_hint="--host",
        ) from None
    with socket.socket(family) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            # in use or privileged: the port; anything else (not this machine's address): the host
            option = "--port" if err.errno in (errno.EADDRINUSE, errno.EACCES) else "--host"
            raise typer.BadParameter(
                f"cannot listen on {host}:{port}: {err.strerror}", param_hint=option
            ) from None
    literal_console(stderr=True).print(
        f"serving the ledger read-only on http://{host}:{port}/ (Ctrl-C stops)", highlight=False
    )
    uvicorn.run(dashboard, host=host, port=port, log_level="warning")
    dashboard.state.ledger.close()

"""``fedcommons operator ...``: commands for the consortium operator."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.keys import (
    PASSPHRASE_ENV,
    load_ed25519_key,
    passphrase_for_new_keys,
    passphrase_from_env,
)
from common.output import OutputFormat, literal_console, printer
from common.policy import Policy
from ledger import Ledger
from server.deploy import DeployError, OperatorFiles
from server.operator.consortium import admit, init_consortium
from server.operator.flower import CONNECTION, FlwrCli
from server.operator.follow import RunOutcome
from server.operator.operate import resume_run, run_policy, summary_of
from server.operator.progress import rounds_table
from server.operator.status import consortium_status, registrar, status_tables
from server.operator.superlink import serve
from server.operator.suspend_cli import reinstate_member, suspend_member
from server.operator.tokens_cli import app as token_app
from server.release.release import release_model

__all__ = ["app"]

app = typer.Typer(
    help="Commands for the consortium operator.", no_args_is_help=True, add_completion=False
)


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="text (for people) or json.")]
FolderOption = Annotated[
    Path, typer.Option("--dir", help="The consortium folder ('operator init').")
]


@app.command("check-policy")
def check_policy(
    policy_file: Annotated[Path, typer.Argument(help="TOML policy file to validate.")],
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Validate a policy file and print the run config it becomes (what every node receives)."""
    policy = Policy.load(policy_file)
    config = policy.to_run_config()
    if output_format is OutputFormat.json:
        typer.echo(json.dumps({"policy_sha256": policy.sha256(), "run_config": config}, indent=2))
        return
    table = Table(title=f"{policy_file} (sha256 {policy.sha256()[:16]}…)")
    table.add_column("run config key")
    table.add_column("value")
    for key, value in config.items():
        table.add_row(key, repr(value))
    literal_console().print(table)


@app.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="New folder for the consortium's files.")],
    name: Annotated[str, typer.Option(help="The consortium's name (on its CA).")] = "FedCommons",
    superlink: Annotated[
        str, typer.Option(help="host:port where participants reach the SuperLink.")
    ] = "127.0.0.1:9092",
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="A host name or IP address for the SuperLink certificate (repeatable; "
            "default: the --superlink host). localhost and 127.0.0.1 are always added: the "
            "SuperLink's own processes connect there.",
        ),
    ] = None,
    ledger_url: Annotated[
        str | None, typer.Option("--ledger", help="SQLAlchemy URL (default: FOLDER/ledger.db).")
    ] = None,
    encrypt_keys: Annotated[
        bool,
        typer.Option(
            "--encrypt-keys",
            help=f"Encrypt the operator, aggregator and CA keys with a passphrase "
            f"(from ${PASSPHRASE_ENV}, or asked).",
        ),
    ] = False,
    log_origin: Annotated[
        str | None,
        typer.Option(
            "--log-origin",
            help="The ledger's log identity: the origin line of its C2SP checkpoints, e.g. "
            "consortium.example.org/ledger (no spaces or '+'; never changes; default: "
            "fedcommons/log/ and the operator key's id).",
        ),
    ] = None,
) -> None:
    """Create a consortium: keys, CA and SuperLink TLS, ledger, policy and deploy settings."""
    # the SuperLink's own SuperExec and ServerApp reach it on 127.0.0.1, through TLS too
    named = host or [superlink.rsplit(":", 1)[0]]
    hosts = list(dict.fromkeys([*named, "localhost", "127.0.0.1"]))
    try:
        files = init_consortium(
            folder,
            name=name,
            superlink=superlink,
            hosts=hosts,
            ledger_url=ledger_url,
            passphrase=passphrase_for_new_keys(encrypt_keys),
            log_origin=log_origin,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    console = literal_console()
    console.print(Text(f"consortium {name!r} created in {files.root}", "green"))
    table = Table(show_header=False)
    for label, path in (
        ("give to participants", files.consortium_file),
        ("policy to edit (sent to every node)", files.policy_file),
        ("deploy settings (operator only)", files.deploy_file),
        ("aggregator key (secret)", files.aggregator_key),
        ("operator signing key (secret)", files.signing_key),
        ("CA certificate", files.tls.ca_certificate),
        ("SuperLink certificate / key", f"{files.tls.certificate} / {files.tls.private_key}"),
        ("flwr CLI connection", f"{files.flwr_home / 'config.toml'} ({CONNECTION})"),
        ("checkpoint verifier key (in consortium.json)", files.consortium().verifier_key),
    ):
        table.add_row(label, str(path))
    console.print(table)


@app.command("admit")
def admit_request(
    request: Annotated[Path, typer.Argument(help="A participant's enrolment-request.json.")],
    folder: FolderOption = Path("."),
    register: Annotated[
        bool,
        typer.Option(
            help="Register the participant's SuperNode key with the running SuperLink "
            "(through the flwr CLI connection in DIR/flwr-home)."
        ),
    ] = True,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Verify an enrolment request, record it in the ledger and let its SuperNode in."""
    files = OperatorFiles(folder.resolve())
    cli = FlwrCli(files.flwr_home)
    consortium = files.consortium()
    policy = files.policy()
    ledger = Ledger(files.deploy().ledger_url, create=False)  # 'operator init' made it

    try:
        admitted = admit(
            ledger,
            consortium,
            request,
            register=registrar(files, cli) if register else None,
            purpose=policy.federation.purpose,
        )
    finally:
        ledger.close()
    result = {
        "institution": admitted.institution,
        "kind": admitted.kind,
        "licence": admitted.licence_terms.id,
        "signing_key_id": admitted.signing_key_id,
        "dataset_sha256": admitted.dataset["sha256"],
        "records": admitted.dataset["records"],
        "supernode_registered": register,
    }
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(result))
        return
    literal_console().print(
        Text.assemble(
            ("admitted", "green"),
            f" {admitted.institution} ({admitted.kind}), dataset "
            f"{str(admitted.dataset['sha256'])[:12]}… ({admitted.dataset['records']} records, "
            f"{admitted.licence_terms.id}), signing key {admitted.signing_key_id[:12]}…"
            + ("; SuperNode key registered" if register else "; SuperNode key NOT registered"),
        )
    )


@app.command("serve")
def serve_superlink(
    folder: Annotated[Path, typer.Argument(help="The consortium folder ('operator init').")],
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: all of this host's).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on (default: the one in DIR/consortium.json)."),
    ] = None,
    database: Annotated[
        Path | None,
        typer.Option(help="The SuperLink's state database (default: DIR/superlink.db)."),
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", hidden=True)] = False,
) -> None:
    """Start the consortium's SuperLink and stay in the foreground (Ctrl-C or SIGTERM stops it).

    TLS with the consortium's certificate, registered SuperNodes only, state
    kept in a database across restarts; the ServerApps it starts read DIR's
    deploy settings. Everything is checked before it starts.
    """
    files = OperatorFiles(folder.resolve())
    code = serve(
        files,
        host=host,
        port=port,
        database=database,
        insecure=insecure,
        say=printer(literal_console(stderr=True)),
    )
    raise typer.Exit(code)


@app.command("status")
def status(
    folder: FolderOption = Path("."),
    federation: Annotated[
        str, typer.Option(help="The flwr CLI connection in DIR/flwr-home to ask.")
    ] = CONNECTION,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Connected SuperNodes by institution, and each run with its last recorded round."""
    files = OperatorFiles(folder.resolve())
    found = consortium_status(files, FlwrCli(files.flwr_home, federation))
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(found, indent=2))
        return
    literal_console().print(*status_tables(found))


@app.command("run")
def run(
    policy_file: Annotated[Path, typer.Argument(help="The run's TOML policy.")],
    folder: FolderOption = Path("."),
    federation: Annotated[
        str, typer.Option(help="The flwr CLI connection in DIR/flwr-home to submit to.")
    ] = CONNECTION,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Validate a policy, submit it with 'flwr run', follow it round by round, summarise it.

    Only the policy travels as the run config; the ServerApp reads the
    operator's deploy settings from DIR, which the SuperLink's environment
    names ($FEDCOMMONS_OPERATOR_DIR).
    """
    policy = Policy.load(policy_file)
    files = OperatorFiles(folder.resolve())
    console = literal_console(stderr=output_format is OutputFormat.json)
    outcome = run_policy(files, policy, FlwrCli(files.flwr_home, federation), console)
    _print_outcome(console, outcome, policy, output_format)


@app.command("resume")
def resume(
    run_id: Annotated[
        int, typer.Option("--run", help="The ledger's run id ('fedcommons audit show').")
    ],
    folder: FolderOption = Path("."),
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="The run's policy, checked against the one it recorded (optional)."
        ),
    ] = None,
    federation: Annotated[
        str, typer.Option(help="The flwr CLI connection in DIR/flwr-home to submit to.")
    ] = CONNECTION,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Continue a run that did not finish (a crash, a signal, a lost quorum) from its last round.

    A new Flower run takes the same ledger run over from the last recorded
    round's snapshot (checked against the ledger's hash), with the server's
    optimiser state; the round in flight is trained again.
    """
    files = OperatorFiles(folder.resolve())
    console = literal_console(stderr=output_format is OutputFormat.json)
    policy = Policy.load(policy_file) if policy_file else None
    cli = FlwrCli(files.flwr_home, federation)
    recorded, outcome = resume_run(files, run_id, cli, console, policy=policy)
    _print_outcome(console, outcome, recorded, output_format)


def _print_outcome(
    console: Console, outcome: RunOutcome, policy: Policy, output_format: OutputFormat
) -> None:
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(summary_of(outcome, policy), indent=2, default=str))
        return
    console.print(rounds_table(outcome.rounds))
    accuracy = "-" if outcome.test_accuracy is None else f"{outcome.test_accuracy:.2%}"
    console.print(
        Text.assemble(
            f"run {outcome.ledger_run_id} (Flower {outcome.flower_run_id}) finished: test "
            "accuracy ",
            (accuracy, "bold"),
            f"; release it with 'fedcommons operator release --run {outcome.ledger_run_id} "
            "--out DIR'",
        )
    )


@app.command("release")
def release(
    run_id: Annotated[
        int, typer.Option("--run", help="The ledger's run id ('fedcommons audit show').")
    ],
    out: Annotated[Path, typer.Option("--out", help="A new or empty folder for the release.")],
    folder: FolderOption = Path("."),
    ledger_url: Annotated[
        str | None,
        typer.Option("--ledger", help="SQLAlchemy URL (default: DIR's deploy settings)."),
    ] = None,
    snapshots: Annotated[
        Path | None,
        typer.Option(
            "--snapshots",
            help="Folder of the run's per-round model snapshots (default: DIR's snapshot-dir).",
        ),
    ] = None,
    operator_key: Annotated[
        Path | None,
        typer.Option(
            "--operator-key",
            help=f"The operator's Ed25519 key (PEM; passphrase from ${PASSPHRASE_ENV}) to sign "
            "a tree head covering the release (default: DIR's operator-key).",
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Write a finished run's final model, its model card (JSON and Markdown), and record it."""
    url, snapshot_dir, key_file = _release_settings(folder, ledger_url, snapshots, operator_key)
    signer = load_ed25519_key(key_file, passphrase=passphrase_from_env()) if key_file else None
    ledger = Ledger(url, create=False)  # refuses a ledger that is not there
    try:
        released = release_model(ledger, run_id, out, snapshot_dir=snapshot_dir, signer=signer)
    finally:
        ledger.close()
    owed = released.card["obligations"]
    result = {
        "run_id": released.run_id,
        "out": str(released.out_dir),
        "model_sha256": released.model_sha256,
        "card_sha256": released.card_sha256,
        "entry_seq": released.entry_seq,
        "tree_head": asdict(released.tree_head) if released.tree_head else None,
        "obligations": owed,
    }
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(result))
        return
    console = literal_console()
    console.print(
        Text.assemble(
            ("released", "green"),
            f" run {released.run_id} into {released.out_dir}: model "
            f"{released.model_sha256[:12]}…, card {released.card_sha256[:12]}… "
            f"(ledger entry {released.entry_seq}"
            + (", covered by a new signed tree head)" if released.tree_head else ")"),
        ),
        highlight=False,
    )
    console.print(
        "obligations: "
        + ("non-commercial use only" if owed["non_commercial"] else "commercial use allowed")
        + (f"; share-alike ({', '.join(owed['share_alike'])})" if owed["share_alike"] else "")
        + f"; credit {len(owed['attribution'])} contributor(s) (see model-card.md)",
        highlight=False,
    )


def _release_settings(
    folder: Path, ledger_url: str | None, snapshots: Path | None, operator_key: Path | None
) -> tuple[str, Path, Path | None]:
    """The ledger, snapshots and signing key: each option given, else DIR's deploy settings."""
    if ledger_url is not None and snapshots is not None and operator_key is not None:
        return ledger_url, snapshots, operator_key
    files = OperatorFiles(folder.resolve())
    if not files.consortium_file.is_file():
        missing = [
            option
            for option, value in (
                ("--ledger", ledger_url),
                ("--snapshots", snapshots),
                ("--operator-key", operator_key),
            )
            if value is None
        ]
        raise DeployError(
            f"{folder} is not a consortium folder ('fedcommons operator init'): name it with "
            f"--dir, or give {', '.join(missing)}"
        )
    deploy = files.deploy()
    return (
        ledger_url or deploy.ledger_url,
        snapshots or deploy.snapshot_dir,
        operator_key or deploy.operator_key,
    )


app.command("suspend")(suspend_member)
app.command("reinstate")(reinstate_member)
app.add_typer(token_app, name="token")

"""``fedcommons operator ...``: commands for the consortium operator."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.cli.errors import user_errors
from common.keys import PASSPHRASE_ENV, load_ed25519_key, passphrase_from_env
from common.local_federation import flwr_json
from common.policy import Policy
from server.consortium import CONNECTION, OperatorFiles, admit, init_consortium
from server.ledger import Ledger
from server.release import release_model

__all__ = ["app"]

app = typer.Typer(help="Commands for the consortium operator.", no_args_is_help=True)


@app.command("check-policy")
def check_policy(
    policy_file: Annotated[Path, typer.Argument(help="TOML policy file to validate.")],
    output_format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Validate a policy file and print the run config it becomes."""
    with user_errors():
        policy = Policy.load(policy_file)
    config = policy.to_run_config()
    if output_format == "json":
        typer.echo(json.dumps({"policy_sha256": policy.sha256(), "run_config": config}, indent=2))
        return
    table = Table(title=f"{policy_file} (sha256 {policy.sha256()[:16]}…)")
    table.add_column("run config key")
    table.add_column("value")
    for key, value in config.items():
        table.add_row(key, repr(value))
    Console().print(table)


def ask_passphrase(encrypt: bool) -> str | None:
    """The passphrase for new keys: ``$FEDCOMMONS_KEY_PASSPHRASE``, else asked twice."""
    if not encrypt:
        return None
    return passphrase_from_env() or typer.prompt(
        "Passphrase for the new private keys", hide_input=True, confirmation_prompt=True
    )


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
            "default: the --superlink host, localhost and 127.0.0.1).",
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
) -> None:
    """Create a consortium: operator and aggregator keys, CA and SuperLink TLS, ledger, policy."""
    hosts = host or list(dict.fromkeys([superlink.rsplit(":", 1)[0], "localhost", "127.0.0.1"]))
    with user_errors():
        try:
            files = init_consortium(
                folder,
                name=name,
                superlink=superlink,
                hosts=hosts,
                ledger_url=ledger_url,
                passphrase=ask_passphrase(encrypt_keys),
            )
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
    console = Console()
    console.print(f"[green]consortium {name!r} created in {files.root}[/]")
    table = Table(show_header=False)
    for label, path in (
        ("give to participants", files.consortium_file),
        ("policy to edit", files.policy_file),
        ("aggregator key (secret)", files.aggregator_key),
        ("operator signing key (secret)", files.signing_key),
        ("CA certificate", files.tls.ca_certificate),
        ("SuperLink certificate / key", f"{files.tls.certificate} / {files.tls.private_key}"),
        ("flwr CLI connection", f"{files.flwr_home / 'config.toml'} ({CONNECTION})"),
    ):
        table.add_row(label, str(path))
    console.print(table)


@app.command("admit")
def admit_request(
    request: Annotated[Path, typer.Argument(help="A participant's enrolment-request.json.")],
    folder: Annotated[
        Path, typer.Option("--dir", help="The consortium folder ('operator init').")
    ] = Path("."),
    register: Annotated[
        bool,
        typer.Option(
            help="Register the participant's SuperNode key with the running SuperLink "
            "(through the flwr CLI connection in DIR/flwr-home)."
        ),
    ] = True,
    output_format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
) -> None:
    """Verify an enrolment request, record it in the ledger and let its SuperNode in."""
    files = OperatorFiles(folder.resolve())
    env = {**os.environ, "FLWR_HOME": str(files.flwr_home)}

    def register_key(public_key: Path) -> object:
        return flwr_json("supernode", "register", str(public_key), CONNECTION, env=env)

    with user_errors():
        consortium = files.consortium()
        policy = files.policy()
        ledger = Ledger(policy.deploy.ledger_url or files.default_ledger_url)
        try:
            admitted = admit(
                ledger,
                consortium,
                request,
                register=register_key if register else None,
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
    if output_format == "json":
        typer.echo(json.dumps(result))
        return
    Console().print(
        f"[green]admitted[/] {admitted.institution} ({admitted.kind}), dataset "
        f"{str(admitted.dataset['sha256'])[:12]}… ({admitted.dataset['records']} records, "
        f"{admitted.licence_terms.id}), signing key {admitted.signing_key_id[:12]}…"
        + ("; SuperNode key registered" if register else "; SuperNode key NOT registered")
    )


@app.command("release")
def release(
    run_id: Annotated[
        int, typer.Option("--run", help="The ledger's run id ('fedcommons audit show').")
    ],
    out: Annotated[Path, typer.Option("--out", help="A new or empty folder for the release.")],
    ledger_url: Annotated[
        str | None,
        typer.Option("--ledger", help="SQLAlchemy URL (default: the policy's deploy.ledger-url)."),
    ] = None,
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="A policy whose deploy section names the ledger and the operator key "
            "(default: DIR/policy.toml unless --ledger is given).",
        ),
    ] = None,
    folder: Annotated[
        Path, typer.Option("--dir", help="The consortium folder ('operator init').")
    ] = Path("."),
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints",
            help="Folder of the run's round checkpoints (default: its deploy.checkpoint-dir).",
        ),
    ] = None,
    operator_key: Annotated[
        Path | None,
        typer.Option(
            "--operator-key",
            help=f"The operator's Ed25519 key (PEM; passphrase from ${PASSPHRASE_ENV}) to sign "
            "a checkpoint covering the release (default: the policy's deploy.operator-key).",
        ),
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
) -> None:
    """Write a finished run's final model, its model card (JSON and Markdown), and record it."""
    with user_errors():
        files = OperatorFiles(folder.resolve())
        policy = None
        if policy_file is not None:
            policy = Policy.load(policy_file)
        elif ledger_url is None:
            policy = files.policy()
        url = ledger_url or (policy.deploy.ledger_url if policy else "") or files.default_ledger_url
        key_file = operator_key or (
            Path(policy.deploy.operator_key) if policy and policy.deploy.operator_key else None
        )
        signer = load_ed25519_key(key_file, passphrase=passphrase_from_env()) if key_file else None
        ledger = Ledger(url, migrate=False)  # refuses a ledger that is not there
        try:
            ledger.upgrade()
            released = release_model(ledger, run_id, out, checkpoint_dir=checkpoints, signer=signer)
        finally:
            ledger.close()
    owed = released.card["obligations"]
    result = {
        "run_id": released.run_id,
        "out": str(released.out_dir),
        "model_sha256": released.model_sha256,
        "card_sha256": released.card_sha256,
        "entry_seq": released.entry_seq,
        "checkpoint": asdict(released.checkpoint) if released.checkpoint else None,
        "obligations": owed,
    }
    if output_format == "json":
        typer.echo(json.dumps(result))
        return
    console = Console()
    console.print(
        f"[green]released[/] run {released.run_id} into {released.out_dir}: model "
        f"{released.model_sha256[:12]}…, card {released.card_sha256[:12]}… "
        f"(ledger entry {released.entry_seq}"
        + (", covered by a new signed checkpoint)" if released.checkpoint else ")"),
        highlight=False,
    )
    console.print(
        "obligations: "
        + ("non-commercial use only" if owed["non_commercial"] else "commercial use allowed")
        + (f"; share-alike ({', '.join(owed['share_alike'])})" if owed["share_alike"] else "")
        + f"; credit {len(owed['attribution'])} contributor(s) (see model-card.md)",
        highlight=False,
    )

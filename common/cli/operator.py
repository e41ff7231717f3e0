"""``fedcommons operator ...``: commands for the consortium operator."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.cli.errors import user_errors
from common.keys import PASSPHRASE_ENV, passphrase_from_env
from common.local_federation import flwr_json
from common.policy import Policy
from server.consortium import CONNECTION, OperatorFiles, admit, init_consortium
from server.ledger import Ledger

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

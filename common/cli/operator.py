"""``fedcommons operator ...``: commands for the consortium operator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.cli.errors import user_errors
from common.policy import Policy

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

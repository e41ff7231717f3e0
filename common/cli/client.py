"""``fedcommons client ...``: commands for a participating institution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

from common.cli.errors import user_errors
from common.data import load_image_data
from common.policy import Policy

__all__ = ["app"]

app = typer.Typer(help="Commands for a participating institution.", no_args_is_help=True)


@app.command("check-data")
def check_data(
    path: Annotated[
        Path, typer.Argument(help="An .npz file, or a folder (one .npz, or PNGs + labels.csv).")
    ],
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Policy giving num-classes and image-size.")
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
) -> None:
    """Validate local data exactly as the ClientApp will, before any round."""
    with user_errors():
        policy = Policy.load(policy_file) if policy_file else Policy()
        data = load_image_data(
            path, num_classes=policy.model.num_classes, image_size=policy.model.image_size
        )
    counts = np.bincount(data.labels, minlength=policy.model.num_classes).tolist()
    if output_format == "json":
        typer.echo(
            json.dumps({"source": data.source, "examples": len(data), "label_counts": counts})
        )
        return
    Console().print(f"[green]ok[/] {data.source}: {len(data)} examples, per label {counts}")

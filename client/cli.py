"""``fedcommons client ...``: commands for a participating institution."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table
from rich.text import Text

from client.accountant import (
    PRIVACY_DIR,
    AccountantHistory,
    PrivacyStateError,
    history_path,
    list_histories,
)
from client.enrolment import ParticipantState, enrol
from client.quorum import established_size, pending, pinned_members
from client.receipts import ReceiptBook
from client.supernode import ISOLATIONS, node_settings
from client.supernode import start as start_supernode
from common.epsilon import format_epsilon
from common.errors import UserError
from common.images import ImageData
from common.keys import PASSPHRASE_ENV, decode_ed25519_public, key_id, passphrase_for_new_keys
from common.local_data import load_local_data
from common.output import OutputFormat, literal_console, printer
from common.policy import Policy
from common.sent import SENT_FOLDER, read_sent, unreceipted

__all__ = ["app"]

FormatOption = Annotated[OutputFormat, typer.Option("--format", help="text (for people) or json.")]
StateOption = Annotated[
    Path, typer.Option("--state", help="The node's state folder (its node config state-dir).")
]

app = typer.Typer(
    help="Commands for a participating institution.", no_args_is_help=True, add_completion=False
)


@app.command("check-data")
def check_data(
    path: Annotated[
        Path,
        typer.Argument(
            help="Images: an .npz file, or a folder (one .npz, or PNGs + labels.csv). "
            "Text (model.name = bert): a .csv or .jsonl file, or a folder holding one."
        ),
    ],
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="Policy giving the model, num-classes and image size or labels."
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Validate local data exactly as the ClientApp will, before any round."""
    policy = Policy.load(policy_file) if policy_file else Policy()
    data = load_local_data(policy, path)
    counts = np.bincount(data.labels, minlength=policy.model.num_classes).tolist()
    source = data.source if isinstance(data, ImageData) else str(path)
    if output_format is OutputFormat.json:
        typer.echo(
            json.dumps(
                {
                    "source": source,
                    "examples": len(data),
                    "label_counts": counts,
                    "sha256": data.sha256(),
                }
            )
        )
        return
    literal_console().print(
        Text.assemble(("ok", "green"), f" {source}: {len(data)} examples, per label {counts}")
    )


@app.command("budget")
def budget(
    state: StateOption,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Privacy budget spent and remaining per dataset, from the node's own accountant."""
    histories = list_histories(state)
    files = ParticipantState(state)
    own = node_settings(files)[0] if files.node_settings.is_file() else None
    if own is None and not (state / PRIVACY_DIR).is_dir():
        raise PrivacyStateError(
            f"{state} is not a FedCommons state folder: it holds neither the node.toml "
            "'fedcommons client enroll' writes nor a privacy/ folder of budget histories"
        )
    _warn_of_others(state, own, histories)
    rows: list[dict[str, Any]] = []
    for h in histories:
        spent = h.epsilon()
        rows.append(
            {
                "institution": h.institution,
                "dataset_sha256": h.dataset_sha256,
                "records": h.num_records,
                "accountant": h.accountant,
                "delta": h.delta,
                "epsilon_budget": h.epsilon_budget,
                "epsilon_spent": spent,
                "epsilon_remaining": max(h.epsilon_budget - spent, 0.0),
                "steps": h.steps,
                "history_sha256": h.sha256,
                "updated_at": h.updated_at,
            }
        )
    if output_format is OutputFormat.json:
        typer.echo(json.dumps({"state_dir": str(state), "datasets": rows}, indent=2))
        return
    if not rows:
        literal_console().print(f"no privacy budget charged yet in {state}")
        return
    table = Table(title=f"Privacy budget in {state}")
    for column in ("institution", "dataset", "records", "ε spent", "ε budget", "remaining", "δ"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["institution"],
            row["dataset_sha256"][:12] + "…",
            str(row["records"]),
            format_epsilon(row["epsilon_spent"]),
            f"{row['epsilon_budget']:g}",
            format_epsilon(row["epsilon_remaining"]),
            f"{row['delta']:g}",
        )
    literal_console().print(table)


@app.command("check")
def check(
    state: StateOption,
    output_format: FormatOption = OutputFormat.text,
) -> None:
    """Updates this node sent without a receipt it can rely on, and the members' keys it pinned.

    Lists each update it holds no receipt for (withheld, unrecorded or
    refused, see receipts/refused/) and each receipt still pending: kept, but
    its checkpoint not yet cosigned by the run's witness quorum. Exits 1 if
    there is any. While a run is under way its last rounds are normally owed
    (the receipt, then the quorum come with the next messages); after the run
    ended, a pending receipt means the operator never brought the quorum, as
    good as a ``no-quorum`` refusal. The pinned keys' ids are for members to
    compare with each other's.
    """
    receipts = state / "receipts"
    if not ((receipts / SENT_FOLDER).is_dir() or ParticipantState(state).node_settings.is_file()):
        raise UserError(
            f"{state} is not a FedCommons state folder: it holds neither the node.toml "
            "'fedcommons client enroll' writes nor a receipts/sent/ folder"
        )
    sent, missing = read_sent(receipts), unreceipted(receipts)
    waiting = pending(ReceiptBook(receipts).receipts(), established_size(receipts))
    members = pinned_members(receipts)
    if output_format is OutputFormat.json:
        rows = [{**asdict(m.sent), "refused": list(m.refused)} for m in missing]
        doc = {
            "state_dir": str(state),
            "sent": len(sent),
            "unreceipted": rows,
            "established_size": established_size(receipts),
            "pending": [{"run_id": r.run_id, "round": r.round} for r in waiting],
            "members": {name: key_id_of(key) for name, key in members.items()},
        }
        typer.echo(json.dumps(doc))
    else:
        say = printer(literal_console())
        say(f"{len(sent)} updates sent, {len(sent) - len(missing)} with a receipt kept")
        for m in missing:
            say(f"no receipt: {m.describe()}")
        for r in waiting:
            say(
                f"pending: run {r.run_id} round {r.round}, its checkpoint of size "
                f"{r.tree_head.tree_size} not yet cosigned by the run's witness quorum"
            )
        for name, key in sorted(members.items()):
            say(f"member {name}: signing key {key_id_of(key)}")
    if missing or waiting:
        raise typer.Exit(1)


def key_id_of(key: str) -> str:
    """The id of a base64 signing key (SHA-256 of its raw bytes), as the ledger names it."""
    return key_id(decode_ed25519_public(key))


def _warn_of_others(state: Path, own: str | None, histories: list[AccountantHistory]) -> None:
    """Say which histories are not this node's institution's (copied from another node?)."""
    names = sorted({h.institution for h in histories})
    if own is None and len(names) < 2:
        return
    say = printer(literal_console(stderr=True))
    for h in histories:
        if h.institution != own:
            whose = f"not {own}'s (this node's)" if own else f"one of {len(names)} institutions'"
            say(
                f"warning: {history_path(state, h.dataset_sha256)} is {h.institution}'s budget "
                f"history, {whose}: was it copied from another node's state folder?"
            )


@app.command("enroll")
def enroll(
    state: Annotated[
        Path, typer.Option("--state", help="This node's own folder (its node config state-dir).")
    ],
    institution: Annotated[str, typer.Option(help="Institution name, e.g. university-a.")],
    kind: Annotated[str, typer.Option(help="academia or industry.")],
    data: Annotated[Path, typer.Option(help="The local data (validated; never leaves).")],
    licence: Annotated[
        str, typer.Option(help="Licence the data are offered under, e.g. CC-BY-4.0.")
    ],
    consortium: Annotated[Path, typer.Option(help="The operator's consortium.json.")] = Path(
        "consortium.json"
    ),
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Policy saying how to read the data.")
    ] = None,
    encrypt_key: Annotated[
        bool,
        typer.Option(
            "--encrypt-key",
            help=f"Encrypt the signing key with a passphrase (from ${PASSPHRASE_ENV}, or "
            "asked); the SuperNode then needs the same variable set.",
        ),
    ] = False,
) -> None:
    """Create this node's keys and a signed enrolment request for the operator."""
    policy = Policy.load(policy_file) if policy_file else Policy()
    request = enrol(
        state,
        institution=institution,
        kind=kind,
        data_path=data,
        licence=licence,
        consortium_file=consortium,
        policy=policy,
        passphrase=passphrase_for_new_keys(encrypt_key),
    )
    files = ParticipantState(state)
    literal_console().print(
        Text.assemble(
            ("enrolment request written", "green"),
            f": {request}\n"
            f"send it to the operator ('fedcommons operator admit {request.name}');\n"
            f"keys (keep secret, mode 0600): {files.signing_key}, {files.supernode_key}\n"
            f"once admitted: fedcommons client start --state {state}",
        )
    )


@app.command("start")
def start(
    state: Annotated[
        Path, typer.Option("--state", help="This node's state folder ('client enroll').")
    ],
    superlink: Annotated[
        str | None,
        typer.Option(help="host:port of the SuperLink (default: the one in consortium.json)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="Local port for its ClientApps (needed only to run several nodes on one machine)."
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the SuperLink to accept connections.")
    ] = 60.0,
    insecure: Annotated[bool, typer.Option("--insecure", hidden=True)] = False,
    isolation: Annotated[
        str,
        typer.Option(
            help="warm: a runner that loaded torch and the base model once forks each "
            "ClientApp; subprocess: Flower starts each ClientApp from scratch."
        ),
    ] = "warm",
    encoder_cache: Annotated[
        bool,
        typer.Option(
            help="BERT with frozen lower layers: train the top from this node's cache of their "
            "outputs (kept in the state folder; the same result, far fewer computations)."
        ),
    ] = True,
) -> None:
    """Start this node's SuperNode and stay in the foreground (Ctrl-C or SIGTERM stops it).

    Refuses to start when the state folder is incomplete, the data no longer
    match the manifest the operator admitted, or the SuperLink's certificate
    was not issued by the pinned consortium CA.
    """
    if isolation not in ISOLATIONS:
        raise typer.BadParameter(
            f"--isolation is {' or '.join(ISOLATIONS)}, not {isolation!r}", param_hint="--isolation"
        )
    code = start_supernode(
        state,
        superlink=superlink,
        clientappio_port=port,
        insecure=insecure,
        wait=wait,
        warm=isolation == "warm",
        encoder_cache=encoder_cache,
        say=printer(literal_console(stderr=True)),
    )
    raise typer.Exit(code)

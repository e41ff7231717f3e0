"""Run Go's ``golang.org/x/mod/sumdb/{note,tlog}`` over a ledger's checkpoints and receipts.

``tests/support/interop/checkpoints.go`` is built in GOPATH mode against Debian's
``golang-golang-x-mod-dev`` (``apt-get install golang-go
golang-golang-x-mod-dev``; ``.ci/run`` installs them): nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import select

from common.receipts import Receipt
from ledger import Ledger
from ledger.cosignatures import cosigned_note
from ledger.schema import Cosignature, LedgerTreeHead, Participant
from tests.support.tools import needs

__all__ = ["GO_PROGRAM", "XMOD", "go_checks", "interop_input", "needs_go"]

GO_PROGRAM = Path(__file__).parent / "interop" / "checkpoints.go"
XMOD = Path("/usr/share/gocode/src/golang.org/x/mod/sumdb")

needs_go = needs(
    "go",
    missing=None
    if shutil.which("go") is not None and (XMOD / "note").is_dir()
    else "needs apt-get install golang-go golang-golang-x-mod-dev (.ci/run installs them)",
)
"""The interop tests' only skip: where Debian's Go and x/mod are not installed."""


def interop_input(ledger: Ledger, operator_vkey: str, receipts: list[Receipt]) -> dict[str, Any]:
    """What the Go program checks: every checkpoint with its cosignatures, and each receipt."""
    with ledger.session() as session:
        notes = []
        for row in session.scalars(
            select(LedgerTreeHead)
            .where(LedgerTreeHead.checkpoint.is_not(None))
            .order_by(LedgerTreeHead.id)
        ):
            witnesses = session.scalars(
                select(Cosignature.witness)
                .where(Cosignature.tree_head_id == row.id)
                .order_by(Cosignature.id)
            )
            notes.append({"note": cosigned_note(session, row), "witnesses": list(witnesses)})
        keys = {
            name: key
            for name, key in session.execute(select(Participant.name, Participant.public_key))
            if key is not None
        }
    return {
        "operator_vkey": operator_vkey,
        "witnesses": keys,
        "notes": notes,
        "receipts": [
            {
                "checkpoint": r.tree_head.checkpoint,
                "index": r.seq,
                "payload": r.payload,
                "inclusion": r.inclusion,
                "previous_size": r.previous_size or 0,
                "previous_root": r.previous_root or "",
                "consistency": r.consistency or [],
            }
            for r in receipts
        ],
    }


def go_checks(doc: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run the Go program on ``doc``; its stdout is a JSON report, exit 1 on a failed check."""
    go = shutil.which("go")
    if go is None or not (XMOD / "note").is_dir():
        raise RuntimeError(
            "Go interop needs 'apt-get install golang-go golang-golang-x-mod-dev' "
            "(.ci/run installs them)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    given = workdir / "interop-input.json"
    given.write_text(json.dumps(doc))
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{workdir / 'gopath'}:/usr/share/gocode",
        "GOCACHE": str(workdir / "go-cache"),
        "GOFLAGS": "",
    }
    return subprocess.run(
        [go, "run", str(GO_PROGRAM), str(given)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

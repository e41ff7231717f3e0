"""Model releases: a run's final global model with a card that states where it came from.

:func:`release_model` checks a finished run against the ledger and writes,
into a new or empty folder::

    OUT/model.safetensors   the final round's global model (its ledger sha256 checked)
    OUT/model-card.json     provenance, obligations, privacy and the ledger proof
    OUT/model-card.md       the same, for people

and appends a ``release`` entry naming the model and the SHA-256 of the
card's JSON bytes (:mod:`server.release.card` builds the card). All or nothing: the
files are written beside ``OUT`` and moved into it only once the ledger has
committed the release, so a failed release leaves neither files nor an
entry, and can simply be repeated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save as save_safetensors
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.arrays import Arrays
from common.atomic import write_atomic
from common.canonical import canonical_json
from common.policy import Policy, PolicyError
from common.receipts import TreeHead, TreeHeadError
from ledger import Ledger
from ledger.cosignatures import cosigned_note, witness_keys
from ledger.entries import record_row
from ledger.schema import (
    LedgerEntry,
    LedgerTreeHead,
    Release,
    Round,
    Run,
)
from ledger.tree_heads import LedgerTree, sign_tree_head, tree_head_from_row
from ledger.verify import verify_ledger
from server.app.snapshots import SnapshotError, checked_snapshot
from server.release.card import ReleaseError, build_card
from server.release.model_card import CARD_JSON, CARD_MARKDOWN, MODEL_FILE, card_markdown

__all__ = ["MODEL_FILE", "ModelRelease", "ReleaseError", "release_model"]


@dataclass(frozen=True)
class ModelRelease:
    """What :func:`release_model` wrote and recorded."""

    run_id: int
    out_dir: Path
    model_sha256: str
    card_sha256: str
    entry_seq: int
    """The ``release`` ledger entry."""
    card: dict[str, Any]
    tree_head: TreeHead | None
    """Signed after the release entry, so it covers it too; ``None`` without a signer."""


def release_model(
    ledger: Ledger,
    run_id: int,
    out_dir: Path,
    *,
    snapshot_dir: Path,
    signer: Ed25519PrivateKey | None = None,
) -> ModelRelease:
    """Release run ``run_id``'s final model with its model card, and record the release.

    Parameters
    ----------
    ledger : Ledger
        The ledger the run is recorded in; it must verify before anything is written.
    run_id : int
        The ledger's run id (``runs.id``, not Flower's).
    out_dir : Path
        A new or empty folder for the release.
    snapshot_dir : Path
        Where the run's per-round model snapshots are (the deploy settings'
        ``snapshot-dir``).
    signer : Ed25519PrivateKey, optional
        The operator's key. With it, the ledger's tree-head signatures are
        checked, a head is signed if none yet covers the final round, and one
        is signed after the release entry so that it is covered too. Without
        it, a signed head must already cover the final round.

    Returns
    -------
    ModelRelease
        The release: files, hashes, its ledger entry and card.

    Raises
    ------
    ReleaseError
        The folder is not empty; the run is unknown, unfinished or has no
        rounds; its final snapshot is missing or is not the model the ledger
        records; no signed tree head covers the final round; a contributor's
        dataset or licence is not in the ledger.
    LedgerError
        The ledger cannot be opened, is busy, or does not verify (``LedgerTampered``).
    """
    _require_empty(out_dir)
    verify_ledger(ledger, signer.public_key() if signer is not None else None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with ledger.session() as session:
            run = _finished_run(session, run_id)
            last = run.rounds[-1]
            arrays = _final_model(run, last, snapshot_dir)
            tree = LedgerTree()  # the entries' leaves, read once for the proof and any signing
            proof = _proof(session, last, signer, tree)
            card = build_card(session, run, _policy_of(run), last, proof)
            card_bytes = _write(staging, arrays, card)
            release = Release(
                run_id=run.id,
                model_sha256=last.model_sha256_after,
                card_sha256=hashlib.sha256(card_bytes).hexdigest(),
                checkpoint_tree_size=proof["tree_head"]["tree_size"],
                checkpoint_root=proof["tree_head"]["root"],
                out=str(out_dir.resolve()),
            )
            entry_seq = record_row(session, release, "release")
            after = (
                sign_tree_head(session, signer, note=f"release of run {run.id}", tree=tree)
                if signer is not None
                else None
            )
        _move_into(staging, out_dir)  # only once the ledger has committed the release
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ModelRelease(
        run_id=run.id,
        out_dir=out_dir,
        model_sha256=release.model_sha256,
        card_sha256=release.card_sha256,
        entry_seq=entry_seq,
        card=card,
        tree_head=after,
    )


def _finished_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise ReleaseError(f"run {run_id} is not in the ledger")
    if run.status != "finished":
        why = f" ({run.status_reason})" if run.status_reason else ""
        raise ReleaseError(
            f"run {run_id} is {run.status}{why}, not finished: only a finished run's model "
            "is released"
        )
    if not run.rounds:
        raise ReleaseError(f"run {run_id} finished without a round: there is no model")
    return run


def _write(folder: Path, arrays: Arrays, card: dict[str, Any]) -> bytes:
    """Write the model and both forms of the card into ``folder``; return the card's JSON bytes."""
    model = card["model"]
    model_bytes = save_safetensors(
        {k: arrays[k] for k in sorted(arrays)},
        metadata={
            "round": str(model["round"]),  # loadable with server.app.snapshots.load_snapshot
            "run": str(card["run"]["id"]),
            "model_sha256": model["sha256"],
        },
    )
    model["file_sha256"] = hashlib.sha256(model_bytes).hexdigest()
    card_bytes = canonical_json(card)
    write_atomic(folder / MODEL_FILE, model_bytes)
    write_atomic(folder / CARD_JSON, card_bytes)
    write_atomic(folder / CARD_MARKDOWN, card_markdown(card))
    return card_bytes


def _require_empty(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ReleaseError(
            f"{out_dir} is not empty: a release is written into a new or empty folder, "
            "never over another"
        )


def _move_into(staging: Path, out_dir: Path) -> None:
    """The finished release folder becomes ``out_dir`` (new, or empty)."""
    _require_empty(out_dir)
    if out_dir.exists():
        with contextlib.suppress(OSError):
            out_dir.rmdir()
    os.rename(staging, out_dir)


def _policy_of(run: Run) -> Policy:
    try:
        return Policy.from_recorded(run.policy_toml)
    except PolicyError as err:
        raise ReleaseError(f"run {run.id}'s recorded policy does not load: {err}") from None


def _final_model(run: Run, last: Round, folder: Path) -> Arrays:
    """The final round's snapshot, refused unless it is the model the ledger records."""
    try:
        return checked_snapshot(folder, last.number, last.model_sha256_after)
    except SnapshotError as err:
        hint = "; another run may have overwritten it" if err.mismatch else ""
        raise ReleaseError(f"run {run.id}'s final model: {err}{hint}") from None


def _proof(
    session: Session, last: Round, signer: Ed25519PrivateKey | None, tree: LedgerTree
) -> dict[str, Any]:
    """The final round's entry, the signed tree head covering it and the inclusion proof.

    ``rounds`` proves every round of the run under that head, so that a reader
    can check each round the card lists (cards before these proofs lack it).
    """
    seq = _seq_of(last)
    row = session.scalar(
        select(LedgerTreeHead)
        .where(LedgerTreeHead.tree_size > seq)
        .order_by(LedgerTreeHead.tree_size, LedgerTreeHead.id)
        .limit(1)
    )
    if row is not None:
        try:
            head = tree_head_from_row(row)
        except TreeHeadError as err:
            raise ReleaseError(str(err)) from None
    elif signer is not None:
        head = sign_tree_head(session, signer, note=f"run {last.run_id} final round", tree=tree)
        row = session.scalar(select(LedgerTreeHead).order_by(LedgerTreeHead.id.desc()).limit(1))
    else:
        raise ReleaseError(
            f"no signed tree head covers round {last.number} of run {last.run_id} "
            f"(entry {seq}); give the operator's key to sign one"
        )
    tree.sync(session)
    entry = _entry(session, last)
    return {
        "entry": entry,
        "tree_head": {
            "tree_size": head.tree_size,
            "root": head.root,
            "at": head.at,
            "note": head.note,
            "key_id": head.key_id,
            "signature": head.signature,
            "signed_body": head.body().decode("ascii"),
            # The C2SP checkpoint with every participant's cosignature kept for it, and
            # each witness's cosignature verifier key (its admitted key, from the ledger).
            "checkpoint": cosigned_note(session, row) if row is not None else None,
            "witnesses": witness_keys(session, row) if row is not None else {},
        },
        "inclusion_proof": tree.inclusion(seq, head.tree_size),
        # every round the card lists, each proven under the same head (the last is "entry")
        "rounds": [
            {**_entry(session, r), "inclusion_proof": tree.inclusion(_seq_of(r), head.tree_size)}
            for r in last.run.rounds
        ],
    }


def _seq_of(round_: Round) -> int:
    """The ledger entry recording ``round_``."""
    if round_.entry_seq is None:
        raise ReleaseError(
            f"round {round_.number} of run {round_.run_id} predates the ledger's entries (v5): "
            "there is no entry to prove it"
        )
    return round_.entry_seq


def _entry(session: Session, round_: Round) -> dict[str, Any]:
    """The entry recording ``round_``, as the card carries it."""
    seq = _seq_of(round_)
    entry = session.get(LedgerEntry, seq)
    if entry is None:  # verify_ledger found every row's entry: only a concurrent rewrite
        raise ReleaseError(f"round {round_.number}'s entry {seq} is missing from the ledger")
    return {"seq": entry.seq, "kind": entry.kind, "payload": entry.payload,
            "leaf_hash": entry.leaf_hash}  # fmt: skip

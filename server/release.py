"""Model releases: a run's final global model with a card that states where it came from.

:func:`release_model` checks a finished run against the ledger and writes,
into a new or empty folder::

    OUT/model.safetensors   the final round's global model (its ledger sha256 checked)
    OUT/model-card.json     provenance, obligations, privacy and the ledger proof
    OUT/model-card.md       the same, for people

then appends a ``release`` entry naming the model and the SHA-256 of the
card's JSON bytes. Only institutions with an accepted update in the run are
contributors: their datasets (as their privacy charges name them) are the
model's provenance, and their licences make up its obligations.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import tomllib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save as save_safetensors
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.canonical import canonical_json
from common.licences import PURPOSES, SPDX, Licence, LicenceError, obligations
from common.model import arrays_sha256
from common.policy import Policy, PolicyError
from common.privacy import epsilon_for_json
from common.records import Arrays
from server.checkpoint import load_checkpoint
from server.ledger import Ledger
from server.ledger.checkpoints import (
    Checkpoint,
    CheckpointError,
    LedgerTree,
    checkpoint_from_row,
    sign_checkpoint,
)
from server.ledger.entries import record_row
from server.ledger.schema import (
    Charge,
    Dataset,
    Exclusion,
    LedgerCheckpoint,
    LedgerEntry,
    Participant,
    Release,
    Round,
    RoundUpdate,
    Run,
    utcnow,
)
from server.ledger.verify import verify_ledger
from server.model_card import CARD_FORMAT, card_markdown

__all__ = ["MODEL_FILE", "ModelRelease", "ReleaseError", "release_model"]

MODEL_FILE = "model.safetensors"
CARD_JSON = "model-card.json"
CARD_MARKDOWN = "model-card.md"


class ReleaseError(ValueError):
    """A run that cannot be released, or a folder a release cannot be written to."""


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
    checkpoint: Checkpoint | None
    """Signed after the release entry, so it covers it too; ``None`` without a signer."""


def release_model(
    ledger: Ledger,
    run_id: int,
    out_dir: Path,
    *,
    checkpoint_dir: Path | None = None,
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
    checkpoint_dir : Path, optional
        Where the run's per-round checkpoints are; default: the run's own
        policy's ``deploy.checkpoint-dir``.
    signer : Ed25519PrivateKey, optional
        The operator's key. With it, the ledger's checkpoint signatures are
        checked, a checkpoint is signed if none yet covers the final round,
        and one is signed after the release entry so that it is covered too.
        Without it, a signed checkpoint must already cover the final round.

    Returns
    -------
    ModelRelease
        The release: files, hashes, its ledger entry and card.

    Raises
    ------
    ReleaseError
        The folder is not empty; the run is unknown, unfinished or has no
        rounds; its final checkpoint is missing or is not the model the
        ledger records; no signed checkpoint covers the final round; a
        contributor's dataset or licence is not in the ledger.
    LedgerError
        The ledger cannot be opened or does not verify (``LedgerTampered``).
    """
    _require_empty(out_dir)
    verify_ledger(ledger, signer.public_key() if signer is not None else None)
    with ledger.session() as session:
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
        last = run.rounds[-1]
        policy = _policy_of(run)
        folder = checkpoint_dir or (
            Path(policy.deploy.checkpoint_dir) if policy.deploy.checkpoint_dir else None
        )
        arrays = _final_model(run, last, folder)
        tree = LedgerTree()  # the entries' leaves, read once for the proof and any signing
        proof = _proof(session, last, signer, tree)
        card = _card(session, run, policy, last, proof)
        card_bytes = _write(out_dir, arrays, card)
        release = Release(
            run_id=run.id,
            model_sha256=last.model_sha256_after,
            card_sha256=hashlib.sha256(card_bytes).hexdigest(),
            checkpoint_tree_size=proof["checkpoint"]["tree_size"],
            checkpoint_root=proof["checkpoint"]["root"],
            out=str(out_dir.resolve()),
        )
        entry_seq = record_row(session, release, "release")
        after = (
            sign_checkpoint(session, signer, note=f"release of run {run.id}", tree=tree)
            if signer is not None
            else None
        )
    return ModelRelease(
        run_id=run.id,
        out_dir=out_dir,
        model_sha256=release.model_sha256,
        card_sha256=release.card_sha256,
        entry_seq=entry_seq,
        card=card,
        checkpoint=after,
    )


def _write(out_dir: Path, arrays: Arrays, card: dict[str, Any]) -> bytes:
    """Write the model and both forms of the card; return the card's JSON bytes."""
    model = card["model"]
    model_bytes = save_safetensors(
        {k: arrays[k] for k in sorted(arrays)},
        metadata={
            "round": str(model["round"]),  # loadable with server.checkpoint.load_checkpoint
            "run": str(card["run"]["id"]),
            "model_sha256": model["sha256"],
        },
    )
    model["file_sha256"] = hashlib.sha256(model_bytes).hexdigest()
    card_bytes = canonical_json(card)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).write_bytes(model_bytes)
    (out_dir / CARD_JSON).write_bytes(card_bytes)
    (out_dir / CARD_MARKDOWN).write_text(card_markdown(card), encoding="utf-8")
    return card_bytes


def _require_empty(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ReleaseError(
            f"{out_dir} is not empty: a release is written into a new or empty folder, "
            "never over another"
        )


def _policy_of(run: Run) -> Policy:
    try:
        return Policy.from_sections(tomllib.loads(run.policy_toml))
    except (tomllib.TOMLDecodeError, PolicyError) as err:
        raise ReleaseError(f"run {run.id}'s recorded policy does not load: {err}") from None


def _final_model(run: Run, last: Round, folder: Path | None) -> Arrays:
    """The final round's checkpoint, refused unless it is the model the ledger records."""
    if folder is None:
        raise ReleaseError(
            f"run {run.id} kept no checkpoints (its policy's deploy.checkpoint-dir is empty); "
            "name the folder that holds them"
        )
    path = folder / f"round-{last.number:04d}.safetensors"
    if not path.is_file():
        raise ReleaseError(
            f"the checkpoint of run {run.id}'s final round {last.number} is missing: no {path}"
        )
    try:
        number, arrays = load_checkpoint(path)
    except Exception as err:
        raise ReleaseError(f"cannot read the checkpoint {path}: {err}") from None
    found = arrays_sha256(arrays)
    if number != last.number or found != last.model_sha256_after:
        raise ReleaseError(
            f"{path} is not run {run.id}'s final model: its sha256 is {found} (round "
            f"{number}), the ledger records {last.model_sha256_after} for round {last.number}; "
            "another run may have overwritten it"
        )
    return arrays


def _proof(
    session: Session, last: Round, signer: Ed25519PrivateKey | None, tree: LedgerTree
) -> dict[str, Any]:
    """The final round's entry, the signed checkpoint covering it and the inclusion proof."""
    seq = last.entry_seq
    if seq is None:
        raise ReleaseError(
            f"round {last.number} of run {last.run_id} predates the ledger's entries (v5): "
            "there is no entry to prove it"
        )
    row = session.scalar(
        select(LedgerCheckpoint)
        .where(LedgerCheckpoint.tree_size > seq)
        .order_by(LedgerCheckpoint.tree_size, LedgerCheckpoint.id)
        .limit(1)
    )
    if row is not None:
        try:
            checkpoint = checkpoint_from_row(row)
        except CheckpointError as err:
            raise ReleaseError(str(err)) from None
    elif signer is not None:
        checkpoint = sign_checkpoint(
            session, signer, note=f"run {last.run_id} final round", tree=tree
        )
    else:
        raise ReleaseError(
            f"no signed checkpoint covers round {last.number} of run {last.run_id} "
            f"(entry {seq}); give the operator's key to sign one"
        )
    tree.sync(session)
    entry = session.get(LedgerEntry, seq)
    if entry is None:  # verify_ledger found every row's entry: only a concurrent rewrite
        raise ReleaseError(f"round {last.number}'s entry {seq} is missing from the ledger")
    return {
        "entry": {
            "seq": entry.seq,
            "kind": entry.kind,
            "payload": entry.payload,
            "leaf_hash": entry.leaf_hash,
        },
        "checkpoint": {
            "tree_size": checkpoint.tree_size,
            "root": checkpoint.root,
            "at": checkpoint.at,
            "note": checkpoint.note,
            "key_id": checkpoint.key_id,
            "signature": checkpoint.signature,
            "signed_body": checkpoint.body().decode("ascii"),
        },
        "inclusion_proof": tree.inclusion(seq, checkpoint.tree_size),
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _licence(dataset: Dataset) -> Licence:
    if dataset.licence_terms:
        try:
            return Licence.from_dict(json.loads(dataset.licence_terms))
        except (ValueError, LicenceError) as err:
            raise ReleaseError(
                f"{dataset.participant.name}'s dataset {dataset.sha256[:12]}: {err}"
            ) from None
    if dataset.licence in SPDX:  # recorded before licences had structured terms
        return SPDX[dataset.licence]
    raise ReleaseError(
        f"{dataset.participant.name}'s dataset {dataset.sha256[:12]} has no licence terms in "
        f"the ledger ({dataset.licence!r}): the model's obligations cannot be stated"
    )


def _contributors(
    session: Session, run: Run
) -> tuple[list[dict[str, Any]], list[tuple[str, Licence]], list[dict[str, Any]]]:
    """Who contributed (an accepted update), with which datasets and licences, at what ε.

    A contributor's datasets are those its privacy charges name for the
    rounds its updates were accepted in, keyed like the strategy's licence
    check: by (institution, dataset sha256).

    Returns
    -------
    tuple
        The card's contributors, ``(institution, licence)`` per dataset, and
        the card's privacy rows (each dataset's last charge in the run).
    """
    rounds_of: dict[int, list[int]] = defaultdict(list)  # participant id -> its rounds
    for participant_id, number in session.execute(
        select(RoundUpdate.participant_id, Round.number)
        .join(Round, Round.id == RoundUpdate.round_id)
        .where(Round.run_id == run.id)
        .order_by(Round.number)
    ):
        rounds_of[participant_id].append(number)
    latest: dict[tuple[int, str], Charge] = {}  # (participant id, dataset) -> last charge
    charged: dict[tuple[int, str], int] = defaultdict(int)
    for charge in session.scalars(
        select(Charge).where(Charge.run_id == run.id).order_by(Charge.round_number, Charge.id)
    ):
        key = (charge.participant_id, charge.dataset_sha256)
        if charge.round_number in rounds_of.get(charge.participant_id, []):
            latest[key] = charge
            charged[key] += 1
    contributors: list[dict[str, Any]] = []
    contributions: list[tuple[str, Licence]] = []
    for participant_id, numbers in sorted(rounds_of.items()):
        participant = session.get(Participant, participant_id)
        if participant is None:  # the foreign key makes this impossible
            raise ReleaseError(f"run {run.id} names participant {participant_id}, who is gone")
        datasets = []
        for pid, sha256 in sorted(k for k in latest if k[0] == participant_id):
            dataset = session.scalar(
                select(Dataset).where(Dataset.participant_id == pid, Dataset.sha256 == sha256)
            )
            if dataset is None:
                raise ReleaseError(
                    f"{participant.name} trained on dataset {sha256[:12]}, which was never "
                    "admitted: its licence is unknown"
                )
            licence = _licence(dataset)
            contributions.append((participant.name, licence))
            datasets.append(
                {
                    "sha256": dataset.sha256,
                    "records": dataset.records,
                    "format": dataset.format,
                    "licence": licence.id,
                    "licence_terms": licence.to_dict(),
                    "request_sha256": dataset.request_sha256,
                }
            )
        if not datasets:
            raise ReleaseError(
                f"{participant.name} contributed to run {run.id} but no privacy charge names "
                "the dataset it trained on: the model's provenance is unknown"
            )
        contributors.append(
            {
                "institution": participant.name,
                "kind": participant.kind,
                "signing_key_id": participant.signing_key_id,
                "rounds": numbers,
                "datasets": datasets,
            }
        )
    privacy = [
        {
            "institution": charge.participant.name,
            "dataset_sha256": charge.dataset_sha256,
            "dp": charge.dp,
            "epsilon": epsilon_for_json(charge.epsilon),
            "delta": charge.delta,
            "accountant": charge.accountant,
            "rounds_charged": charged[key],
        }
        for key, charge in sorted(latest.items(), key=lambda kv: (kv[1].participant.name, kv[0]))
    ]
    return contributors, contributions, privacy


def _obligations(contributions: list[tuple[str, Licence]]) -> dict[str, Any]:
    """The combined terms of every contributing dataset (:func:`common.licences.obligations`)."""
    owed = obligations(contributions)
    expiries = [lic.expires for _, lic in contributions if lic.expires is not None]
    first_expiry: date | None = min(expiries) if expiries else None
    return {
        "attribution": list(owed.attribution),
        "non_commercial": owed.non_commercial,
        "non_commercial_from": [
            f"{name} ({lic.id})" for name, lic in contributions if not lic.commercial
        ],
        "share_alike": list(owed.share_alike),
        "share_alike_from": [
            f"{name} ({lic.id})" for name, lic in contributions if lic.share_alike
        ],
        # what every contributing licence allows
        "purposes": [p for p in PURPOSES if all(p in lic.purposes for _, lic in contributions)],
        "expires": first_expiry.isoformat() if first_expiry else None,
    }


def _card(
    session: Session, run: Run, policy: Policy, last: Round, proof: dict[str, Any]
) -> dict[str, Any]:
    """The model card as JSON-ready data (the model file's sha256 is added by the caller)."""
    contributors, contributions, privacy = _contributors(session, run)
    exclusions = session.scalars(
        select(Exclusion).where(Exclusion.run_id == run.id).order_by(Exclusion.id)
    ).all()
    return {
        "format": CARD_FORMAT,
        "released_at": utcnow().isoformat(timespec="seconds"),
        "run": {
            "id": run.id,
            "flower_run_id": run.flower_run_id,
            "model": run.model,
            "dataset": run.dataset,
            "purpose": policy.federation.purpose,
            "policy_sha256": run.policy_sha256,
            "rounds": last.number,
            "planned_rounds": run.planned_rounds,
            "started_at": run.started_at.isoformat(),
            "ended_at": run.ended_at.isoformat() if run.ended_at else None,
            "test_accuracy": _finite(run.test_accuracy),
            "test_loss": _finite(run.test_loss),
        },
        "model": {
            "file": MODEL_FILE,
            "sha256": last.model_sha256_after,
            "round": last.number,
            "initial_sha256": run.initial_model_sha256,
            "base_sha256": run.base_model_sha256,
        },
        "contributors": contributors,
        "obligations": _obligations(contributions),
        "privacy": privacy,
        "rounds": [
            {
                "round": r.number,
                "participants": sorted(u.participant.name for u in r.updates),
                "accuracy": _finite(r.accuracy),
                "loss": _finite(r.loss),
                "model_sha256_after": r.model_sha256_after,
            }
            for r in run.rounds
        ],
        "exclusions": [
            {
                "round": e.round_number,
                "institution": e.participant.name if e.participant else None,
                "node_id": e.node_id,
                "code": e.code,
                "reason": e.reason,
            }
            for e in exclusions
        ],
        "ledger": proof,
    }

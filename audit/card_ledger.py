"""The card checks that need the ledger: witnesses, quorum, release entry, provenance, ε.

Each takes what it trusts from the consortium's ledger (read-only), never
from the card: the witnesses' keys from the admission records
(``participants.public_key`` of members with ``admitted_at``), the log's
heads from ``tree_heads``, the release from its entry, obligations from the
licences the ledger records and ε from the recorded privacy charges
(:mod:`ledger.provenance`, the code that builds the card). ``audit verify``
checks that those rows are the ledger's entries; ``audit verify --releases``
runs both.

The quorum is the one the run's ``run-members`` entry states (the policy's
``[witness] quorum``, never below a majority) of the members that entry names:
the participants admitted by the time the run started, with their admitted
keys (a number the operator cannot shrink by leaving members out of rounds),
less those suspended when it started (each suspension is an entry before
the run's).
An entry that names other members or keys than the admissions the ledger
records fails the quorum check. Runs recorded before that entry existed
count a majority of the participants admitted by the run's start.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.card_proof import CardProof, Check
from common.keys import KeyFileError, decode_ed25519_public
from common.note import COSIGNATURE_TYPE, NoteError, verifier_key, verify_cosignature
from common.quorum import majority
from ledger.facts import admitted_keys
from ledger.members import members_entry
from ledger.members import run_members as recorded_members
from ledger.provenance import ProvenanceError, contributors, obligations_doc
from ledger.schema import LedgerTreeHead, Participant, Release, Run
from ledger.suspensions import in_force

__all__ = ["ledger_checks", "run_members"]


def run_members(session: Session, run: Run) -> list[str]:
    """The members admitted to ``run``: participants admitted by the time it started, less
    those suspended then (as the ledger stood before the run's ``run-members`` entry)."""
    keys = admitted_keys(session)
    started = members_entry(session, run.id)
    suspended = in_force(session, started[0]) if started is not None else {}
    return sorted(
        p.name
        for p in session.scalars(select(Participant).where(Participant.admitted_at.is_not(None)))
        if p.name in keys
        and p.name not in suspended
        and (run.started_at is None or _naive(p.admitted_at) <= _naive(run.started_at))
    )


def _naive(when: Any) -> Any:
    return when.replace(tzinfo=None) if getattr(when, "tzinfo", None) else when


def ledger_checks(
    session: Session, card: dict[str, Any], proof: CardProof, card_sha256: str
) -> list[Check]:
    """The checks of :data:`audit.cards.LEDGER_CHECKS`, in that order."""
    run = session.get(Run, card["run"]["id"]) if isinstance(card["run"].get("id"), int) else None
    if run is None:
        why = f"the ledger records no run {card['run'].get('id')!r}: nobody trained this model"
        names = ("witnesses", "quorum", "release", "contributors", "obligations", "privacy")
        return [_checkpoint(session, proof), *(Check(name, False, why) for name in names)]
    keys = admitted_keys(session)
    members = run_members(session, run)
    entry = recorded_members(session, run.id)
    required, mismatch = majority(len(members)), ""
    if entry is not None:
        required = entry.required
        named = {n: k for n, k in keys.items() if n in members}
        if entry.members != named:
            mismatch = (
                f"; the run's members entry names {', '.join(sorted(entry.members))} (or their "
                f"keys) where the ledger admitted {', '.join(members) or 'nobody'} by its start"
            )
    witnesses, cosigners = _witnesses(proof, keys, members)
    return [
        _checkpoint(session, proof),
        witnesses,
        _quorum(cosigners, members, run.id, required, mismatch),
        _release(session, card, proof, card_sha256, run),
        *_provenance(session, card, run),
    ]


def _checkpoint(session: Session, proof: CardProof) -> Check:
    head = proof.head
    row = session.scalar(
        select(LedgerTreeHead.id).where(
            LedgerTreeHead.tree_size == head.tree_size, LedgerTreeHead.root_hash == head.root
        )
    )
    if row is None:
        return Check(
            "checkpoint", False,
            f"the ledger holds no signed head of size {head.tree_size} with root "
            f"{head.root[:16]}...: the card's head is not this log's",
        )  # fmt: skip
    return Check("checkpoint", True, f"the ledger's head of size {head.tree_size}")


def _witnesses(
    proof: CardProof, keys: dict[str, str], members: list[str]
) -> tuple[Check, list[str]]:
    """Each cosignature checked with its witness's admitted key; the run's members that verified.

    A participant admitted after the run started may cosign (its line must
    verify) but does not count towards the run's quorum.
    """
    problems, cosigners = [], []
    text = proof.head.body().decode("utf-8")
    for name, stated in sorted(proof.witness_keys.items()):
        admitted = keys.get(name)
        if admitted is not None and _vkey(name, admitted) != stated:
            problems.append(
                f"the card states a witness key for {name} that is not the key the consortium "
                "admitted it with"
            )
    for line in proof.head.witnesses():
        if line.name not in keys:
            problems.append(f"{line.name} cosigned, but the consortium admitted no {line.name}")
            continue
        try:
            verify_cosignature(text, line, decode_ed25519_public(keys[line.name]))
        except (NoteError, KeyFileError) as err:
            problems.append(
                f"{line.name}'s cosignature does not verify on this checkpoint with its "
                f"admitted key ({err}): forged, or replayed from another checkpoint"
            )
            continue
        if line.name in members and line.name not in cosigners:
            cosigners.append(line.name)
    if problems:
        return Check("witnesses", False, "; ".join(problems)), cosigners
    named = ", ".join(cosigners) or "nobody"
    return Check("witnesses", True, f"cosigned by {named}, with their admitted keys"), cosigners


def _vkey(name: str, public: str) -> str | None:
    try:
        return verifier_key(name, decode_ed25519_public(public), COSIGNATURE_TYPE)
    except KeyFileError:
        return None


def _quorum(
    cosigners: list[str], members: list[str], run_id: int, required: int, mismatch: str
) -> Check:
    rule = "a majority" if required == majority(len(members)) else "the policy's"
    detail = (
        f"cosigned by {len(cosigners)} of the {len(members)} members admitted to run {run_id} "
        f"({', '.join(cosigners) or 'none'}); the quorum is {required} ({rule}){mismatch}"
    )
    return Check("quorum", len(cosigners) >= required and not mismatch, detail)


def _release(
    session: Session, card: dict[str, Any], proof: CardProof, card_sha256: str, run: Run
) -> Check:
    """The release entry names this card, its model and its head; the model is the run's last."""
    release = session.scalar(
        select(Release).where(Release.run_id == run.id, Release.card_sha256 == card_sha256)
    )
    if release is None:
        return Check(
            "release", False,
            f"no release entry of run {run.id} names this card (sha256 {card_sha256[:16]}...): "
            "it is not the card the operator released",
        )  # fmt: skip
    problems = []
    if release.model_sha256 != card["model"]["sha256"]:
        problems.append(
            f"the release entry names model {release.model_sha256}, the card "
            f"{card['model']['sha256']}"
        )
    final = run.rounds[-1].model_sha256_after if run.rounds else None
    if final != release.model_sha256:
        problems.append(
            f"the release names model {release.model_sha256}, run {run.id} ended at {final}"
        )
    if (release.checkpoint_tree_size, release.checkpoint_root) != (
        proof.head.tree_size,
        proof.head.root,
    ):
        problems.append(
            f"the release entry names the head of size {release.checkpoint_tree_size}, the card "
            f"carries the head of size {proof.head.tree_size}"
        )
    if problems:
        return Check("release", False, "; ".join(problems))
    return Check("release", True, f"release entry {release.entry_seq} names this card and model")


def _provenance(session: Session, card: dict[str, Any], run: Run) -> list[Check]:
    """Contributors, obligations and ε recomputed from the ledger and compared field by field."""
    try:
        named, contributions, privacy = contributors(session, run)
    except ProvenanceError as err:
        return [Check(n, False, str(err)) for n in ("contributors", "obligations", "privacy")]
    stated_contributors = {
        c.get("institution"): _contributor(c) for c in card.get("contributors") or []
    }
    recorded_contributors = {c["institution"]: _contributor(c) for c in named}
    return [
        _compare("contributors", stated_contributors, recorded_contributors,
                 "the ledger's updates and charges"),
        _compare("obligations", card.get("obligations") or {}, obligations_doc(contributions),
                 "the licences the ledger records"),
        _compare("privacy", _by_dataset(card.get("privacy") or []), _by_dataset(privacy),
                 "the privacy charges the ledger records"),
    ]  # fmt: skip


def _contributor(c: dict[str, Any]) -> dict[str, Any]:
    datasets = c.get("datasets") or []
    return {
        "rounds": c.get("rounds"),
        "datasets": [(d.get("sha256"), d.get("licence")) for d in datasets],
    }


def _by_dataset(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {f"{r.get('institution')}/{str(r.get('dataset_sha256'))[:12]}": r for r in rows}


def _compare(name: str, stated: dict[Any, Any], recorded: dict[Any, Any], source: str) -> Check:
    """Every key whose value the card states otherwise than the ledger, named with both values."""
    problems = []
    for key in sorted(set(stated) | set(recorded), key=str):
        mine, theirs = stated.get(key), recorded.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            problems += [
                f"{key} {field}: the card says {mine.get(field)!r}, "
                f"{source} say {theirs.get(field)!r}"
                for field in sorted(set(mine) | set(theirs))
                if mine.get(field) != theirs.get(field)
            ]
        elif mine != theirs:
            problems.append(f"{key}: the card says {mine!r}, {source} say {theirs!r}")
    if problems:
        return Check(name, False, "; ".join(problems))
    return Check(name, True, f"as {source} state")

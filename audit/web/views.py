"""What each dashboard page shows, as JSON-ready data read from the ledger (read-only).

Every page has an API twin under ``/api/`` that returns exactly this data;
the HTML pages render it. Nothing here writes, and nothing returned names
the ledger's URL or any secret.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit.cards import check_card
from common.policy import Policy, PolicyError
from common.receipts import TreeHeadError
from ledger.contributions import contributions_report
from ledger.report import ledger_report
from ledger.schema import FlowerRun, LedgerEntry, LedgerTreeHead, Round, Run
from ledger.tree_heads import LedgerTree, tree_head_from_row

__all__ = ["LedgerView", "NotFound"]


class NotFound(LookupError):
    """The page's subject (a run, an entry) is not in the ledger."""


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


CACHED_RUNS = 16


class LedgerView:
    """The dashboard's reads; keeps the Merkle tree's leaves between requests.

    A run's page is built once per state of the ledger: every change to a run
    (a round, a charge, a status, a release, a value) appends an entry, so a
    run read when the last entry was ``seq`` stays right until another entry
    lands. The newest :data:`CACHED_RUNS` builds are kept.
    """

    def __init__(self, operator: Ed25519PublicKey | None = None, origin: str | None = None) -> None:
        self._operator, self._origin = operator, origin
        self._tree = LedgerTree()
        self._lock = threading.Lock()
        self._runs: OrderedDict[tuple[int, int], Any] = OrderedDict()

    def cached_run(
        self, session: Session, run_id: int, build: Callable[[dict[str, Any]], Any] = dict
    ) -> Any:
        """``build(self.run(session, run_id))``, reused while no entry has been appended."""
        key = (run_id, session.scalar(select(func.max(LedgerEntry.seq))) or -1)
        with self._lock:
            if key in self._runs:
                self._runs.move_to_end(key)
                return self._runs[key]
        built = build(self.run(session, run_id))
        with self._lock:
            self._runs[key] = built
            while len(self._runs) > CACHED_RUNS:
                self._runs.popitem(last=False)
        return built

    def latest_head(self, session: Session) -> dict[str, Any] | None:
        row = session.scalar(select(LedgerTreeHead).order_by(LedgerTreeHead.id.desc()).limit(1))
        if row is None:
            return None
        try:
            head = tree_head_from_row(row)
        except TreeHeadError as err:
            return {"error": str(err)}
        return {"tree_size": head.tree_size, "root": head.root, "at": head.at, "note": head.note,
                "key_id": head.key_id, "signature": head.signature}  # fmt: skip

    def overview(self, session: Session) -> dict[str, Any]:
        report = ledger_report(session, run_id=0)  # no run: cheap
        participants = report["participants"]
        kinds: dict[str, int] = {}
        for p in participants:
            kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
        return {
            "participants": [
                {
                    "name": p["name"],
                    "kind": p["kind"],
                    "enrolled_at": p["enrolled_at"],
                    "admitted_at": p["admitted_at"],
                    "signing_key_id": p["signing_key_id"],
                    "suspended": p["suspended"],
                }
                for p in participants
            ],
            "suspensions": report["suspensions"],
            "kinds": kinds,
            "datasets": [
                {
                    "institution": p["name"],
                    "sha256": d["sha256"],
                    "records": d["records"],
                    "format": d["format"],
                    "licence": d["licence"],
                }
                for p in participants
                for d in p["datasets"]
            ],
            "entries": session.scalar(select(func.count()).select_from(LedgerEntry)) or 0,
            "runs": session.scalar(select(func.count()).select_from(Run)) or 0,
            "latest_tree_head": self.latest_head(session),
        }

    def runs(self, session: Session) -> list[dict[str, Any]]:
        rounds = {
            run_id: count
            for run_id, count in session.execute(
                select(Round.run_id, func.count()).group_by(Round.run_id)
            )
        }
        resumed = {r for (r,) in session.execute(select(FlowerRun.run_id).distinct())}
        return [
            {"id": r.id, "flower_run_id": r.flower_run_id, "status": r.status,
             "status_reason": r.status_reason, "resumed": r.id in resumed, "model": r.model,
             "dataset": r.dataset, "policy_sha256": r.policy_sha256,
             "rounds": rounds.get(r.id, 0), "planned_rounds": r.planned_rounds,
             "test_accuracy": _finite(r.test_accuracy),
             "started_at": r.started_at.isoformat() if r.started_at else None,
             "ended_at": r.ended_at.isoformat() if r.ended_at else None}
            for r in session.scalars(select(Run).order_by(Run.id))
        ]  # fmt: skip

    def run(self, session: Session, run_id: int) -> dict[str, Any]:
        found = ledger_report(session, run_id=run_id, light=True)["runs"]
        if not found:
            raise NotFound(f"no run {run_id}")
        run = found[0]
        row = session.get(Run, run_id)
        budget = None
        if row is not None:
            try:
                policy = Policy.from_recorded(row.policy_toml)
                budget = policy.privacy.epsilon if policy.privacy.dp else None
            except PolicyError:
                budget = None
        epsilon: dict[str, list[dict[str, Any]]] = {}
        for charge in run["privacy_charges"]:
            value = charge["epsilon"]
            epsilon.setdefault(charge["institution"], []).append(
                {"round": charge["round"], "epsilon": None if value == "inf" else value}
            )
        (valued,) = contributions_report(session, run_id=run_id)
        return {
            "id": run["id"],
            "status": run["status"],
            "status_reason": run["status_reason"],
            "flower_runs": run["flower_runs"],
            "model": run["model"],
            "dataset": run["dataset"],
            "policy_sha256": run["policy_sha256"],
            "planned_rounds": run["planned_rounds"],
            "test_accuracy": _finite(run["test_accuracy"]),
            "epsilon_budget": budget,
            "policy_toml": row.policy_toml if row is not None else None,
            "rounds": [
                {
                    "round": r["round"],
                    "accuracy": _finite(r["accuracy"]),
                    "loss": _finite(r["loss"]),
                    "participants": sorted(u["institution"] for u in r["updates"]),
                    "model_sha256_after": r["model_sha256_after"],
                }
                for r in run["rounds"]
            ],
            "epsilon": epsilon,
            "exclusions": run["exclusions"],
            "defences": run["defences"],
            "contributions": {
                "rounds": valued["rounds"],
                "institutions": valued["institutions"],
                "kinds": valued["kinds"],
            },
            "releases": [
                {**r, "card": _card_text(r["out"]), "verdict": self._verdict(session, r["out"])}
                for r in run["releases"]
            ],
        }

    def entry(self, session: Session, seq: int) -> dict[str, Any]:
        row = session.get(LedgerEntry, seq)
        if row is None:
            raise NotFound(f"no ledger entry {seq}")
        head = self.latest_head(session)
        proof = None
        if head is not None and "error" not in head and seq < head["tree_size"]:
            with self._lock:
                self._tree.sync(session)
                proof = self._tree.inclusion(seq, head["tree_size"])
        return {
            "seq": row.seq,
            "kind": row.kind,
            "payload": row.payload,
            "leaf_hash": row.leaf_hash,
            "tree_head": head,
            "inclusion_proof": proof,
            "how_to_check": "leaf = SHA-256(0x00 || payload); fold the RFC 6962 inclusion proof "
            "from leaf index seq up to tree_head.root (tree_size leaves); check the "
            "head's Ed25519 signature with the operator's key",
        }

    def _verdict(self, session: Session, out: str | None) -> dict[str, Any]:
        """The card check's verdict on the released card, against this ledger."""
        if self._operator is None:
            return {"status": "not checked", "checks": [],
                    "detail": "the dashboard was started without the operator's key"}  # fmt: skip
        try:
            data = (Path(out) / "model-card.json").read_bytes() if out else b""
            card = json.loads(data)
            if not isinstance(card, dict):
                raise ValueError("not a JSON object")
            verdict = check_card(
                card, operator=self._operator, origin=self._origin, session=session,
                card_sha256=hashlib.sha256(data).hexdigest(),
            )  # fmt: skip
        except (OSError, ValueError) as err:  # CardError is a ValueError
            return {"status": "not checked", "checks": [],
                    "detail": f"the card is not readable here: {err}"}  # fmt: skip
        return {**verdict.to_dict(), "detail": None}


def _card_text(out: str | None) -> str | None:
    """The released model card (markdown), if the release folder is readable here."""
    if not out:
        return None
    path = Path(out) / "model-card.md"
    try:
        return path.read_text(encoding="utf-8")[:200_000]
    except (OSError, UnicodeDecodeError):
        return None

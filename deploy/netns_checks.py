"""The checks of ``netns-test.sh`` that need Python: run results and byte scans.

Run by the script with the interpreter ``fedcommons`` is installed in::

    python netns_checks.py WORK --consortium OPERATOR_DIR university-a university-b company-c

Every file on the operator host (``WORK/operator``: the consortium folder
with the SuperLink's database, snapshots and kept envelopes, the logs, and a
dump of the ledger's PostgreSQL database) is scanned for each participant's
data (each record's bytes and pieces of its data file) and for each update
in plaintext (what each kept envelope decrypts to, with the aggregator's
key). As a control, the scan must find a sealed update's ciphertext in the
SuperLink's database, which relays it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.envelope import Envelope, UpdateHeader, decrypt
from common.images import ImageData
from common.keys import load_x25519_key
from common.local_data import load_local_data
from common.policy import Policy


def _chunks(data: bytes, size: int) -> list[bytes]:
    """``data`` in ``size``-byte pieces, leaving out low-entropy ones (runs of zeros)."""
    pieces = [data[i : i + size] for i in range(0, len(data) - size + 1, size)]
    return [p for p in pieces if len(set(p)) >= 24]


def _tensor_bytes(safetensors: bytes) -> bytes:
    """A safetensors blob without its JSON header (names and shapes, the same in every model)."""
    header = int.from_bytes(safetensors[:8], "little")
    return safetensors[8 + header :]


def _found(pieces: list[bytes], haystack: bytes) -> int:
    return sum(piece in haystack for piece in pieces)


def _images(path: Path) -> np.ndarray:
    """The image records at ``path``, read as a participant's node reads them."""
    data = load_local_data(Policy(), path)
    if not isinstance(data, ImageData):
        raise SystemExit(f"{path}: expected image data")
    return np.asarray(data.images)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def check_run(work: Path, institutions: list[str], rounds: int) -> None:
    summary = _json(work / "operator" / "run-summary.json")
    assert summary["status"] == "finished:completed", summary["status"]
    assert [r["round"] for r in summary["rounds"]] == list(range(1, rounds + 1)), summary["rounds"]
    assert all(r["participants"] == len(institutions) for r in summary["rounds"])
    before = _json(work / "operator" / "status-before.json")
    online = sorted(n["institution"] for n in before["nodes"] if n["status"] == "online")
    assert online == sorted(institutions), before["nodes"]
    after = _json(work / "operator" / "status-after.json")
    (run,) = after["runs"]
    assert (run["status"], run["last_round"]) == ("finished", rounds), run
    verified = _json(work / "auditor" / "verify.json")
    assert verified["intact"] is True, verified
    receipts = sorted((work / "auditor" / "receipts").rglob("*.json"))
    hosts = {path.parent.name for path in receipts}
    assert hosts == set(institutions) and len(receipts) == rounds * len(institutions), receipts
    assert verified["receipts"] == len(receipts) and verified["signatures_checked"], verified
    print(
        f"run {summary['ledger_run_id']}: {rounds} rounds x {len(institutions)} institutions, "
        f"test accuracy {summary['test_accuracy']:.3f}; ledger intact with "
        f"{len(receipts)} receipts from {len(hosts)} hosts"
    )


def check_operator_files(work: Path, consortium: Path, institutions: list[str]) -> None:
    files = [p for p in sorted((work / "operator").rglob("*")) if p.is_file()]
    haystack = b"\n".join(p.read_bytes() for p in files)
    own = {
        image.tobytes()
        for split in ("validation", "test")
        for image in _images(consortium / "data" / f"{split}.npz")
    }
    for name in institutions:
        data_dir = work / name / "data"
        records = [i.tobytes() for i in _images(data_dir) if i.tobytes() not in own]
        file_pieces = [c for f in sorted(data_dir.iterdir()) for c in _chunks(f.read_bytes(), 512)]
        assert records and file_pieces
        found = _found(records, haystack) + _found(file_pieces, haystack)
        assert found == 0, f"{found} pieces of {name}'s data are in files on the operator host"
    aggregator = load_x25519_key(consortium / "keys" / "aggregator.pem")
    kept = sorted((consortium / "snapshots").glob("round-*-updates/*.json"))
    assert len(kept) >= len(institutions), kept
    for path in kept:
        envelope = Envelope.from_json(path.read_text(encoding="utf-8"))
        plaintext = decrypt(envelope, UpdateHeader.parse(envelope.header), aggregator)
        pieces = _chunks(_tensor_bytes(plaintext), 64)
        assert len(pieces) > 100, path
        found = _found(pieces, haystack)
        assert found == 0, f"{found} pieces of the plaintext of {path} are on the operator host"
    superlink = b"".join(p.read_bytes() for p in sorted(consortium.glob("superlink.db*")))
    # The control: the scan finds what the SuperLink stored. SQLite reuses freed pages,
    # and after the run's closing queries (receipts, then the witness quorum) the
    # relayed global models are gone; the last sealed updates' ciphertexts remain.
    shares = []
    for path in kept:
        envelope = Envelope.from_json(path.read_text(encoding="utf-8"))
        control = _chunks(envelope.ciphertext, 64)
        shares.append(_found(control, superlink) / len(control))
    share = max(shares)
    assert share > 0.9, f"the control failed: at most {share:.0%} of a sealed update found"
    print(
        f"{len(files)} operator files ({len(haystack) / 1e6:.1f} MB) hold no participant data "
        f"and none of {len(kept)} plaintext updates; control: {share:.0%} of a sealed "
        "update's ciphertext found in the SuperLink's database"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--consortium", type=Path, required=True)
    parser.add_argument("institutions", nargs="+")
    args = parser.parse_args(argv)
    rounds = int(
        Policy.load(args.work / "operator" / "policy.toml").federation.rounds,
    )
    check_run(args.work, args.institutions, rounds)
    check_operator_files(args.work, args.consortium, args.institutions)
    return 0


if __name__ == "__main__":
    sys.exit(main())

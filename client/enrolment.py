"""A participant's enrolment: its keys, its dataset manifest and a signed request.

:func:`enrol` creates the participant's Ed25519 signing key and its Flower
SuperNode key in its own state folder (:class:`ParticipantState`), describes
its dataset by a manifest (hash, record count, schema; never the data) and
writes an enrolment request signed with the new key, bound to the
consortium (:mod:`common.consortium`) the operator published.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from common.atomic import write_atomic
from common.canonical import canonical_json
from common.consortium import (
    PARTICIPANT_KINDS,
    REQUEST_VERSION,
    Consortium,
    EnrolmentError,
    check_institution,
    read_json_object,
)
from common.images import ImageData
from common.keys import encode_public, load_ed25519_key, write_private_key, write_supernode_key
from common.licences import parse_licence
from common.local_data import data_suffix, load_local_data
from common.policy import Policy

__all__ = ["ParticipantState", "dataset_manifest", "enrol"]


def dataset_manifest(policy: Policy, data_path: Path) -> dict[str, Any]:
    """Hash, record count and schema of a dataset, read as the ClientApp reads it."""
    data = load_local_data(policy, data_path)
    schema: dict[str, Any]
    if isinstance(data, ImageData):
        schema = {
            "kind": "images",
            "shape": list(data.images.shape[1:]),
            "num_classes": policy.model.num_classes,
        }
    else:
        schema = {
            "kind": "text",
            "text_column": policy.data.text_column,
            "label_column": policy.data.label_column,
            "labels": list(policy.data.label_names),
        }
    return {
        "sha256": data.sha256(),
        "records": len(data),
        "format": data_suffix(policy).lstrip("."),
        "schema": schema,
    }


@dataclass(frozen=True)
class ParticipantState:
    """The files a participant keeps in its state folder (its SuperNode's ``state-dir``)."""

    root: Path

    @property
    def signing_key(self) -> Path:
        return self.root / "keys" / "signing.pem"

    @property
    def supernode_key(self) -> Path:
        return self.root / "keys" / "supernode.pem"

    @property
    def supernode_public_key(self) -> Path:
        return self.root / "keys" / "supernode.pub"

    @property
    def consortium(self) -> Path:
        return self.root / "consortium.json"

    @property
    def ca_certificate(self) -> Path:
        """The consortium CA (from ``consortium.json``): the SuperNode's ``--root-certificates``."""
        return self.root / "ca.pem"

    @property
    def request(self) -> Path:
        return self.root / "enrolment-request.json"

    @property
    def node_settings(self) -> Path:
        """Which institution this node is and where its data are (``client start`` reads it)."""
        return self.root / "node.toml"

    @property
    def data_policy(self) -> Path:
        """How the data were read at enrolment, so the start can check them the same way."""
        return self.root / "data-policy.toml"

    def load_signing_key(self, passphrase: str | None = None) -> Ed25519PrivateKey:
        return load_ed25519_key(self.signing_key, passphrase=passphrase)


def enrol(
    state_dir: Path,
    *,
    institution: str,
    kind: str,
    data_path: Path,
    licence: str,
    consortium_file: Path,
    policy: Policy | None = None,
    passphrase: str | None = None,
    reuse_keys: bool = False,
) -> Path:
    """Create a participant's keys and its signed enrolment request; return the request path.

    Parameters
    ----------
    state_dir : Path
        The participant's own folder (later its SuperNode's ``state-dir``).
    institution, kind : str
        Its name and ``academia`` or ``industry``.
    data_path : Path
        Its data, validated and summarised here; the data never leave.
    licence : str
        The licence the data are offered under: an SPDX id with built-in
        terms (:data:`common.licences.SPDX`) or a TOML file of custom terms.
    consortium_file : Path
        The operator's ``consortium.json``; a copy is kept in ``state_dir``.
    policy : Policy, optional
        How to read the data (model, classes, labels); the default policy if omitted.
    passphrase : str, optional
        Encrypts the signing key. The SuperNode key stays unencrypted (Flower
        reads it itself), mode 0600 like every key.
    reuse_keys : bool (default: False)
        If ``state_dir`` already holds keys, sign a new request with them (a
        new dataset, the same identity) instead of refusing. The request is
        rewritten only if something in it changed.
    """
    check_institution(institution)
    if kind not in PARTICIPANT_KINDS:
        raise EnrolmentError(f"kind must be one of {PARTICIPANT_KINDS}, not {kind!r}")
    if not licence.strip():
        raise EnrolmentError("declare the licence the data are offered under (e.g. CC-BY-4.0)")
    terms = parse_licence(licence.strip())
    consortium = Consortium.load(consortium_file)
    manifest = dataset_manifest(policy or Policy(), data_path)
    state = ParticipantState(state_dir)
    enrolled = [p for p in (state.signing_key, state.supernode_key) if p.exists()]
    if enrolled and not reuse_keys:
        raise EnrolmentError(
            f"{enrolled[0]} exists: {state_dir} already holds an enrolment; use a new "
            "state folder (keys are never overwritten)"
        )
    staged: Path | None = None  # new keys wait here until everything else is written
    if enrolled:
        signing = state.load_signing_key(passphrase)
        supernode_public = load_ssh_public_key(state.supernode_public_key.read_bytes())
        if not isinstance(supernode_public, ec.EllipticCurvePublicKey):
            raise EnrolmentError(f"{state.supernode_public_key} is not an ECDSA key")
        supernode = supernode_public
    else:
        keys = state.signing_key.parent
        if keys.exists() and (not keys.is_dir() or any(keys.iterdir())):
            raise EnrolmentError(f"{keys} holds other files: use a new state folder")
        state.root.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".keys.", dir=state.root))
        signing = Ed25519PrivateKey.generate()
        write_private_key(staged / state.signing_key.name, signing, passphrase=passphrase)
        supernode = write_supernode_key(
            staged / state.supernode_key.name, staged / state.supernode_public_key.name
        )
    try:
        request = _write_request(
            state, consortium, signing, supernode, institution, kind, terms.to_dict(), manifest
        )
        write_atomic(state.data_policy, (policy or Policy()).to_toml())
        write_atomic(
            state.node_settings,
            "# written by 'fedcommons client enroll'; read by 'fedcommons client start'\n"
            f"institution = {json.dumps(institution)}\n"
            f"data = {json.dumps(str(data_path.resolve()))}\n",
        )
        if staged is not None:  # the keys land last: a failure before leaves no enrolment
            if state.signing_key.parent.exists():
                state.signing_key.parent.rmdir()  # empty, checked above
            os.rename(staged, state.signing_key.parent)
            staged = None
    except OSError as err:
        raise EnrolmentError(
            f"cannot write the enrolment into {state.root}: {err.strerror} "
            f"({err.filename}); nothing was enrolled, so fix it and run the same command again"
        ) from None
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    return request


def _write_request(
    state: ParticipantState,
    consortium: Consortium,
    signing: Ed25519PrivateKey,
    supernode: ec.EllipticCurvePublicKey,
    institution: str,
    kind: str,
    licence: dict[str, Any],
    manifest: dict[str, Any],
) -> Path:
    """Copy the consortium's public files and write the signed request (if it changed)."""
    consortium.write(state.consortium)
    write_atomic(state.ca_certificate, consortium.ca_certificate)
    doc: dict[str, Any] = {
        "version": REQUEST_VERSION,
        "consortium_id": consortium.id,
        "institution": institution,
        "kind": kind,
        "licence": licence,
        "dataset": manifest,
        "signing_public_key": encode_public(signing.public_key()),
        "supernode_public_key": _openssh(supernode),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if state.request.exists():
        previous = read_json_object(state.request, "enrolment request")
        keep = ("created_at", "signature")
        if {k: v for k, v in previous.items() if k not in keep} == {
            k: v for k, v in doc.items() if k not in keep
        }:
            return state.request  # unchanged: keep the request the operator may have seen
    doc["signature"] = base64.b64encode(signing.sign(canonical_json(doc))).decode()
    write_atomic(state.request, json.dumps(doc, indent=2) + "\n")
    return state.request


def _openssh(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()

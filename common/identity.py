"""Identities: the consortium's public file, a participant's keys and its enrolment request.

The operator publishes ``consortium.json`` (aggregator X25519 key, operator
Ed25519 key, CA certificate, SuperLink address). A participant enrols with
it: :func:`enrol` creates the participant's Ed25519 signing key and its
Flower SuperNode key in its own state folder, describes its dataset by a
manifest (hash, record count, schema; never the data) and writes an
enrolment request signed with the new key. :func:`read_request` is the
operator's side: it parses and verifies such a request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from common.canonical import canonical_json
from common.data import ImageData
from common.datasets import data_suffix, load_local_data
from common.keys import (
    KeyFileError,
    decode_ed25519_public,
    decode_x25519_public,
    encode_public,
    key_id,
    load_ed25519_key,
    write_private_key,
    write_supernode_key,
)
from common.licences import Licence, LicenceError, parse_licence
from common.policy import Policy

__all__ = [
    "PARTICIPANT_KINDS",
    "Consortium",
    "EnrolmentError",
    "EnrolmentRequest",
    "ParticipantState",
    "dataset_manifest",
    "enrol",
    "read_request",
]

PARTICIPANT_KINDS = ("academia", "industry")
REQUEST_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class EnrolmentError(ValueError):
    """A consortium file or an enrolment request is malformed, tampered or refused."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise EnrolmentError(f"no {what} at {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise EnrolmentError(f"{path} is not a JSON {what}: {err}") from err
    if not isinstance(doc, dict):
        raise EnrolmentError(f"{path} is not a JSON {what} (not an object)")
    return doc


def _field(doc: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise EnrolmentError(f"{where}: '{key}' must be a {kind.__name__} (got {value!r})")
    return value


def _strings(doc: dict[str, Any], keys: list[str], where: Path) -> dict[str, str]:
    return {key: _field(doc, key, str, where) for key in keys}


def check_institution(name: str) -> str:
    """An institution name: lower case letters, digits, '.', '_' and '-', at most 64."""
    if not _NAME.match(name):
        raise EnrolmentError(
            f"institution name {name!r} must be 1-64 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Consortium:
    """What every party may know about the consortium (``consortium.json``)."""

    name: str
    superlink: str
    """``host:port`` where SuperNodes and the ``flwr`` CLI reach the SuperLink."""
    aggregator_public_key: str
    operator_public_key: str
    ca_certificate: str
    """PEM text of the consortium CA."""
    version: int = 1

    @property
    def aggregator_key(self) -> X25519PublicKey:
        return decode_x25519_public(self.aggregator_public_key)

    @property
    def operator_key(self) -> Ed25519PublicKey:
        return decode_ed25519_public(self.operator_public_key, "the operator key")

    @property
    def id(self) -> str:
        """The aggregator key's id: requests and updates are bound to it."""
        return key_id(self.aggregator_key)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> Consortium:
        doc = _read_json(path, "consortium file")
        names = [f.name for f in fields(cls) if f.name != "version"]
        consortium = cls(**_strings(doc, names, path))  # type: ignore[arg-type]  # str fields
        try:
            _ = consortium.aggregator_key, consortium.operator_key
        except (KeyFileError, ValueError) as err:
            raise EnrolmentError(f"{path}: {err}") from err
        if "BEGIN CERTIFICATE" not in consortium.ca_certificate:
            raise EnrolmentError(f"{path}: 'ca_certificate' is not a PEM certificate")
        return consortium


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

    def load_signing_key(self, passphrase: str | None = None) -> Ed25519PrivateKey:
        return load_ed25519_key(self.signing_key, passphrase=passphrase)


@dataclass(frozen=True)
class EnrolmentRequest:
    """A verified enrolment request."""

    institution: str
    kind: str
    licence: dict[str, Any]
    """The licence terms (:meth:`common.licences.Licence.to_dict`)."""
    dataset: dict[str, Any]
    signing_public_key: str
    supernode_public_key: str
    consortium_id: str
    created_at: str

    @property
    def signing_key(self) -> Ed25519PublicKey:
        return decode_ed25519_public(self.signing_public_key)

    @property
    def signing_key_id(self) -> str:
        return key_id(self.signing_key)

    @property
    def licence_terms(self) -> Licence:
        return Licence.from_dict(self.licence)


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
    if enrolled:
        signing = state.load_signing_key(passphrase)
        supernode_public = load_ssh_public_key(state.supernode_public_key.read_bytes())
        if not isinstance(supernode_public, ec.EllipticCurvePublicKey):
            raise EnrolmentError(f"{state.supernode_public_key} is not an ECDSA key")
        supernode = supernode_public
    else:
        signing = Ed25519PrivateKey.generate()
        write_private_key(state.signing_key, signing, passphrase=passphrase)
        supernode = write_supernode_key(state.supernode_key, state.supernode_public_key)
    consortium.write(state.consortium)
    state.ca_certificate.write_text(consortium.ca_certificate, encoding="ascii")
    doc: dict[str, Any] = {
        "version": REQUEST_VERSION,
        "consortium_id": consortium.id,
        "institution": institution,
        "kind": kind,
        "licence": terms.to_dict(),
        "dataset": manifest,
        "signing_public_key": encode_public(signing.public_key()),
        "supernode_public_key": _openssh(supernode),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if state.request.exists():
        previous = _read_json(state.request, "enrolment request")
        keep = ("created_at", "signature")
        if {k: v for k, v in previous.items() if k not in keep} == {
            k: v for k, v in doc.items() if k not in keep
        }:
            return state.request  # unchanged: keep the request the operator may have seen
    doc["signature"] = base64.b64encode(signing.sign(canonical_json(doc))).decode()
    state.request.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return state.request


def _openssh(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def read_request(path: Path, consortium: Consortium) -> EnrolmentRequest:
    """Parse and verify an enrolment request for ``consortium``.

    Raises
    ------
    EnrolmentError
        Malformed JSON or fields, a request for another consortium, a bad
        SuperNode key, or a signature that does not verify (tampering).
    """
    doc = _read_json(path, "enrolment request")
    if doc.get("version") != REQUEST_VERSION:
        raise EnrolmentError(f"{path}: unsupported request version {doc.get('version')!r}")
    signature_text = _field(doc, "signature", str, path)
    names = [f.name for f in fields(EnrolmentRequest) if f.name not in ("dataset", "licence")]
    values = _strings(doc, names, path)
    dataset = _field(doc, "dataset", dict, path)
    licence = _field(doc, "licence", dict, path)
    request = EnrolmentRequest(dataset=dataset, licence=licence, **values)
    try:
        _ = request.licence_terms
    except LicenceError as err:
        raise EnrolmentError(f"{path}: {err}") from err
    try:
        check_institution(request.institution)
    except EnrolmentError as err:
        raise EnrolmentError(f"{path}: {err}") from err
    if request.kind not in PARTICIPANT_KINDS:
        raise EnrolmentError(f"{path}: kind {request.kind!r} is not one of {PARTICIPANT_KINDS}")
    if request.consortium_id != consortium.id:
        raise EnrolmentError(
            f"{path} was made for another consortium (aggregator key "
            f"{request.consortium_id[:16]}..., this one is {consortium.id[:16]}...)"
        )
    try:
        public = request.signing_key
    except KeyFileError as err:
        raise EnrolmentError(f"{path}: {err}") from err
    try:
        signature = base64.b64decode(signature_text, validate=True)
        public.verify(signature, canonical_json({k: v for k, v in doc.items() if k != "signature"}))
    except (binascii.Error, ValueError, InvalidSignature):
        raise EnrolmentError(
            f"{path}: the signature does not verify: the request was changed after it "
            "was signed, or was not signed with the key it names"
        ) from None
    try:
        supernode = load_ssh_public_key(request.supernode_public_key.encode())
    except (ValueError, TypeError) as err:
        raise EnrolmentError(f"{path}: the SuperNode key is not an OpenSSH key: {err}") from err
    if not isinstance(supernode, ec.EllipticCurvePublicKey) or supernode.curve.name != "secp384r1":
        raise EnrolmentError(f"{path}: the SuperNode key must be ECDSA P-384")
    for key, kind in (("sha256", str), ("records", int), ("schema", dict)):
        if not isinstance(dataset.get(key), kind) or isinstance(dataset.get(key), bool):
            raise EnrolmentError(f"{path}: dataset manifest lacks a valid '{key}'")
    return request

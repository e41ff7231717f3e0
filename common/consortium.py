"""The consortium's public contracts: ``consortium.json`` and enrolment requests.

The operator publishes ``consortium.json`` (aggregator X25519 key, operator
Ed25519 key, CA certificate, SuperLink address); every party may read it. A
participant enrols with it (:mod:`client.enrolment`) and sends a signed
enrolment request; :func:`read_request` is the operator's side: it parses
and verifies such a request. Both sides share these types, so what one
writes the other reads.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from common.atomic import write_atomic
from common.canonical import canonical_json
from common.errors import UserError
from common.keys import KeyFileError, decode_ed25519_public, decode_x25519_public, key_id
from common.licences import Licence, LicenceError
from common.note import NoteError, check_key_name, parse_verifier_key, verifier_key

__all__ = [
    "PARTICIPANT_KINDS",
    "REQUEST_VERSION",
    "Consortium",
    "EnrolmentError",
    "EnrolmentRequest",
    "check_institution",
    "default_log_origin",
    "read_json_object",
    "read_request",
]

PARTICIPANT_KINDS = ("academia", "industry")
REQUEST_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class EnrolmentError(UserError, ValueError):
    """A consortium file or an enrolment request is malformed, tampered or refused."""


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`EnrolmentError` names the file and the problem."""
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


def default_log_origin(operator: Ed25519PublicKey) -> str:
    """The log origin of a consortium that set none: named after its operator key."""
    return f"fedcommons/log/{key_id(operator)[:16]}"


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
    log_origin: str = ""
    """The ledger's log identity: the origin line of every checkpoint (set at init).

    Empty in files written before checkpoints: :attr:`origin` is then derived
    from the operator key, as the ledger derives it."""
    operator_verifier_key: str = ""
    """The operator key as a C2SP note verifier key (``name+id+key``), for any note tool."""

    @property
    def origin(self) -> str:
        """The log's origin: :attr:`log_origin`, or the one derived from the operator key."""
        return self.log_origin or default_log_origin(self.operator_key)

    @property
    def verifier_key(self) -> str:
        """The operator's verifier key for the log's checkpoints (as ``note.NewVerifier`` reads)."""
        return verifier_key(self.origin, self.operator_key)

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
        return write_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Consortium:
        doc = read_json_object(path, "consortium file")
        optional = ("version", "log_origin", "operator_verifier_key")
        names = [f.name for f in fields(cls) if f.name not in optional]
        extra = _strings(doc, [n for n in optional[1:] if n in doc], path)
        consortium = cls(**_strings(doc, names, path), **extra)  # type: ignore[arg-type]  # str fields
        try:
            _ = consortium.aggregator_key, consortium.operator_key
        except (KeyFileError, ValueError) as err:
            raise EnrolmentError(f"{path}: {err}") from err
        try:
            check_key_name(consortium.origin)
            if consortium.operator_verifier_key:
                parse_verifier_key(consortium.operator_verifier_key)
                if consortium.operator_verifier_key != consortium.verifier_key:
                    raise NoteError(
                        "'operator_verifier_key' is not the operator key under the log origin "
                        f"{consortium.origin!r}"
                    )
        except NoteError as err:
            raise EnrolmentError(f"{path}: {err}") from err
        if "BEGIN CERTIFICATE" not in consortium.ca_certificate:
            raise EnrolmentError(f"{path}: 'ca_certificate' is not a PEM certificate")
        return consortium


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


def read_request(path: Path, consortium: Consortium) -> EnrolmentRequest:
    """Parse and verify an enrolment request for ``consortium``.

    Raises
    ------
    EnrolmentError
        Malformed JSON or fields, a request for another consortium, a bad
        SuperNode key, or a signature that does not verify (tampering).
    """
    doc = read_json_object(path, "enrolment request")
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

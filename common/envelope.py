"""The update envelope: a client's weights encrypted to the aggregator and signed.

Sealing (client side):

1. the update's safetensors bytes are encrypted to the aggregator's X25519
   key: a fresh ephemeral X25519 key per message, HKDF-SHA256 (random salt;
   ``info`` binds the protocol version, run, round and participant) gives an
   AES-256-GCM key; a fresh 96-bit nonce; the AAD is the canonical header;
2. the participant signs SHA-256 over ``len(header) ‖ header ‖ kem ‖
   ciphertext`` with its Ed25519 key (the length prefix makes the split
   unambiguous), where ``kem`` is ``ephemeral public key ‖ salt ‖ nonce``
   (76 bytes) and ``ciphertext`` the AES-GCM output with its tag, so a flipped
   bit anywhere breaks the signature. The two travel as separate fields so a
   large update is never copied to prepend 76 bytes.

The header is canonical JSON (sorted keys, no spaces, no NaN), so the bytes
that were signed and authenticated are the bytes the server parses.
Opening is split into :func:`verify_signature` and :func:`decrypt` so the
server can run its checks in the order its policy names
(:mod:`server.app.strategy.intake`). Only primitives from ``cryptography`` are used.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import ConfigRecord

from common.canonical import canonical_json
from common.errors import UserError
from common.keys import key_id
from common.protocol import ENVELOPE, PrivacyCharge

__all__ = [
    "PROTOCOL_VERSION",
    "Envelope",
    "EnvelopeError",
    "UpdateHeader",
    "decrypt",
    "envelope_of",
    "envelope_record",
    "seal",
    "verify_signature",
]

PROTOCOL_VERSION = 1
_EPHEMERAL, _SALT, _NONCE, _TAG = 32, 32, 12, 16
_PREFIX = _EPHEMERAL + _SALT + _NONCE


class EnvelopeError(UserError, ValueError):
    """An envelope that cannot be parsed, verified or decrypted.

    ``reason`` is a short stable code (``malformed``, ``bad-signature``,
    ``undecryptable``, ...) for the ledger; the message says what happened.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class UpdateHeader:
    """What an update claims about itself; authenticated as AES-GCM AAD and signed.

    ``privacy`` is the round's :class:`~common.protocol.PrivacyCharge`, so the
    ledger's privacy charges come from signed data.
    """

    run_id: str
    """Flower's run id, as decimal text."""
    round: int
    participant: str
    model_sha256: str
    """SHA-256 of the global model the update was trained from."""
    base_model_sha256: str
    """SHA-256 of the frozen base model (the part that never travels)."""
    num_examples: int
    privacy: PrivacyCharge
    version: int = PROTOCOL_VERSION

    def canonical(self) -> bytes:
        doc: dict[str, Any] = asdict(self)
        doc["privacy"] = {
            k: ("inf" if isinstance(v, float) and math.isinf(v) else v)
            for k, v in self.privacy.as_dict().items()
        }
        return canonical_json(doc)

    @classmethod
    def parse(cls, data: bytes) -> UpdateHeader:
        """Parse canonical header bytes; :class:`EnvelopeError` if they are anything else."""
        try:
            doc = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as err:
            raise EnvelopeError("malformed", f"the header is not JSON: {err}") from err
        if not isinstance(doc, dict):
            raise EnvelopeError("malformed", "the header is not a JSON object")
        expected = {f.name for f in fields(cls)}
        if set(doc) != expected:
            raise EnvelopeError(
                "malformed", f"the header has keys {sorted(doc)}, expected {sorted(expected)}"
            )
        if doc["version"] != PROTOCOL_VERSION:
            raise EnvelopeError(
                "malformed",
                f"protocol version {doc['version']!r}; this server speaks {PROTOCOL_VERSION}",
            )
        types = {
            "run_id": str,
            "round": int,
            "participant": str,
            "model_sha256": str,
            "base_model_sha256": str,
            "num_examples": int,
        }
        for key, kind in types.items():
            value = doc[key]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise EnvelopeError("malformed", f"header '{key}' has the wrong type: {value!r}")
        if doc["num_examples"] <= 0:
            raise EnvelopeError("malformed", f"header num_examples is {doc['num_examples']}")
        raw = doc["privacy"]
        if not isinstance(raw, dict):
            raise EnvelopeError("malformed", "header 'privacy' is not an object")
        as_record = {k.replace("_", "-"): (math.inf if v == "inf" else v) for k, v in raw.items()}
        try:
            privacy = PrivacyCharge.from_record(as_record)
        except ValueError as err:
            raise EnvelopeError("malformed", f"header {err}") from err
        header = cls(**{**doc, "privacy": privacy})
        if header.canonical() != data:
            raise EnvelopeError("malformed", "the header is not in canonical form")
        return header

    def hkdf_info(self) -> bytes:
        """HKDF ``info``: binds the derived key to this protocol, run, round and sender."""
        return (
            f"fedcommons-update/v{self.version}/run={self.run_id}/round={self.round}/"
            f"participant={self.participant}"
        ).encode()


@dataclass(frozen=True)
class Envelope:
    """A sealed update as it travels (all of it is public)."""

    header: bytes
    kem: bytes
    """Ephemeral X25519 public key, HKDF salt and AES-GCM nonce (76 bytes)."""
    ciphertext: bytes
    """AES-256-GCM output, tag included."""
    signature: bytes
    signer_key_id: str

    def signed_digest(self) -> bytes:
        digest = hashlib.sha256(struct.pack(">Q", len(self.header)))
        for part in (self.header, self.kem, self.ciphertext):
            digest.update(part)
        return digest.digest()

    def ciphertext_sha256(self) -> str:
        """SHA-256 of everything encrypted that travelled: ``kem ‖ ciphertext``."""
        digest = hashlib.sha256(self.kem)
        digest.update(self.ciphertext)
        return digest.hexdigest()

    def to_json(self) -> str:
        """The envelope as a JSON document (bytes in base64), e.g. to keep as evidence."""
        return json.dumps(
            {
                "header": base64.b64encode(self.header).decode(),
                "kem": base64.b64encode(self.kem).decode(),
                "ciphertext": base64.b64encode(self.ciphertext).decode(),
                "signature": base64.b64encode(self.signature).decode(),
                "signer_key_id": self.signer_key_id,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Envelope:
        """Read :meth:`to_json` output; :class:`EnvelopeError` (``malformed``) otherwise."""
        try:
            doc = json.loads(text)
            return cls(
                header=base64.b64decode(doc["header"], validate=True),
                kem=base64.b64decode(doc["kem"], validate=True),
                ciphertext=base64.b64decode(doc["ciphertext"], validate=True),
                signature=base64.b64decode(doc["signature"], validate=True),
                signer_key_id=str(doc["signer_key_id"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as err:
            raise EnvelopeError("malformed", f"not a saved envelope: {err!r}") from err


def _derive(shared: bytes, salt: bytes, header: UpdateHeader) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=header.hkdf_info()).derive(
        shared
    )


def seal(
    plaintext: bytes,
    header: UpdateHeader,
    *,
    aggregator: X25519PublicKey,
    signer: Ed25519PrivateKey,
) -> Envelope:
    """Encrypt ``plaintext`` to the aggregator and sign it (see the module docstring)."""
    ephemeral = X25519PrivateKey.generate()
    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    key = _derive(ephemeral.exchange(aggregator), salt, header)
    aad = header.canonical()
    kem = (
        ephemeral.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        + salt
        + nonce
    )
    unsigned = Envelope(aad, kem, AESGCM(key).encrypt(nonce, plaintext, aad), b"", "")
    return dataclasses.replace(
        unsigned,
        signature=signer.sign(unsigned.signed_digest()),
        signer_key_id=key_id(signer.public_key()),
    )


def verify_signature(envelope: Envelope, public: Ed25519PublicKey) -> None:
    """Check the envelope's Ed25519 signature against ``public``."""
    try:
        public.verify(envelope.signature, envelope.signed_digest())
    except InvalidSignature:
        raise EnvelopeError(
            "bad-signature",
            f"the signature does not verify with the key registered for this participant "
            f"({key_id(public)[:16]}...)",
        ) from None


def decrypt(envelope: Envelope, header: UpdateHeader, aggregator: X25519PrivateKey) -> bytes:
    """Decrypt an envelope whose header has been parsed (and signature verified)."""
    if len(envelope.kem) != _PREFIX or len(envelope.ciphertext) < _TAG:
        raise EnvelopeError(
            "malformed",
            f"key material of {len(envelope.kem)} bytes (needs {_PREFIX}) and a ciphertext "
            f"of {len(envelope.ciphertext)} bytes (needs at least {_TAG})",
        )
    kem = envelope.kem
    ephemeral = X25519PublicKey.from_public_bytes(kem[:_EPHEMERAL])
    salt, nonce = kem[_EPHEMERAL : _EPHEMERAL + _SALT], kem[_EPHEMERAL + _SALT :]
    try:
        shared = aggregator.exchange(ephemeral)
    except ValueError as err:  # an all-zero shared secret (a low-order point)
        raise EnvelopeError("undecryptable", f"key agreement failed: {err}") from err
    key = _derive(shared, salt, header)
    try:
        return AESGCM(key).decrypt(nonce, envelope.ciphertext, envelope.header)
    except InvalidTag:
        raise EnvelopeError(
            "undecryptable",
            "AES-GCM authentication failed: encrypted to another aggregator key, "
            "or the ciphertext, nonce or header were changed",
        ) from None


def envelope_record(envelope: Envelope) -> ConfigRecord:
    """A sealed update as the ``ConfigRecord`` a training reply carries."""
    return ConfigRecord(
        {
            "header": envelope.header,
            "kem": envelope.kem,
            "ciphertext": envelope.ciphertext,
            "signature": envelope.signature,
            "signer-key-id": envelope.signer_key_id,
        }
    )


def envelope_of(record: ConfigRecord | None) -> Envelope:
    """Read a sealed update back; :class:`EnvelopeError` (``malformed``) if it is not one."""
    if record is None:
        raise EnvelopeError("malformed", f"the reply has no '{ENVELOPE}' record")
    values: dict[str, Any] = {}
    for key, kind in (
        ("header", bytes),
        ("kem", bytes),
        ("ciphertext", bytes),
        ("signature", bytes),
        ("signer-key-id", str),
    ):
        value = record.get(key)
        if not isinstance(value, kind):
            raise EnvelopeError(
                "malformed", f"envelope '{key}' is {type(value).__name__}, not {kind.__name__}"
            )
        values[key.replace("-", "_")] = value
    if len(values["signature"]) != 64:
        raise EnvelopeError(
            "malformed", f"the signature has {len(values['signature'])} bytes, not 64"
        )
    return Envelope(**values)

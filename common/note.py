"""C2SP signed notes, transparency-log checkpoints and witness cosignatures.

The formats any transparency tool reads (Go's ``golang.org/x/mod/sumdb/note``,
transparency-dev, Sigstore):

- a **signed note** (c2sp.org/signed-note) is a text ending in a newline, a
  blank line, and signature lines ``— <key name> base64(key ID ‖ signature)``;
  an Ed25519 key's ID is ``SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)[:4]`` and
  its *verifier key* is ``<name>+<hex key ID>+base64(0x01 ‖ public key)``;
- a **checkpoint** (c2sp.org/tlog-checkpoint) is a note whose text is the
  log's origin, its tree size and its base64 RFC 6962 root, one per line;
- a **cosignature** (c2sp.org/tlog-cosignature, ``cosignature/v1``) is a
  witness's signature line on a checkpoint: key ID with type byte 0x04,
  signature = 8-byte big-endian POSIX time ‖ Ed25519 signature over
  ``"cosignature/v1\\ntime <t>\\n" ‖ checkpoint text``. It states that, at that
  time, this was the largest consistent tree the witness had seen.

The operator signs checkpoints under the log's origin; participants cosign
the checkpoints they checked (:mod:`client.receipts`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common.errors import UserError

__all__ = [
    "COSIGNATURE_TYPE",
    "ED25519_TYPE",
    "CheckpointBody",
    "NoteError",
    "SignatureLine",
    "check_key_name",
    "cosign",
    "cosignature_time",
    "key_hash",
    "note_text",
    "parse_verifier_key",
    "sign_note",
    "signature_lines",
    "verifier_key",
    "verify_cosignature",
    "verify_signature",
    "verify_signed",
]

ED25519_TYPE = 0x01
"""Signature type of a plain Ed25519 note signature (the operator's)."""
COSIGNATURE_TYPE = 0x04
"""Signature type of a timestamped Ed25519 checkpoint cosignature (a witness's)."""
_DASH = "\u2014 "
_MAX_SIGNATURES = 100  # Go's note.Open refuses more; the C2SP minimum is 16
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,18})$")


class NoteError(UserError, ValueError):
    """A signed note, checkpoint, verifier key or cosignature that is malformed or false."""


def check_key_name(name: str) -> str:
    """A note key name: non-empty, no spaces, no '+', no control characters."""
    if not name or any(c.isspace() or c == "+" or ord(c) < 0x20 for c in name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")
    return name


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_hash(name: str, public: Ed25519PublicKey, kind: int = ED25519_TYPE) -> bytes:
    """The 4-byte key ID: ``SHA-256(name ‖ "\\n" ‖ type ‖ public key)[:4]``."""
    check_key_name(name)
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + _raw(public)).digest()[:4]


def verifier_key(name: str, public: Ed25519PublicKey, kind: int = ED25519_TYPE) -> str:
    """``<name>+<hex key ID>+base64(type ‖ public key)``, as ``note.NewVerifier`` reads it."""
    encoded = base64.b64encode(bytes([kind]) + _raw(public)).decode()
    return f"{name}+{key_hash(name, public, kind).hex()}+{encoded}"


def parse_verifier_key(vkey: str) -> tuple[str, int, Ed25519PublicKey]:
    """``(name, type, public key)`` of a verifier key; :class:`NoteError` if it is not one."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3 or len(parts[1]) != 8:
        raise NoteError(f"{vkey!r} is not a verifier key (<name>+<8 hex digits>+<base64 key>)")
    name, hex_id, encoded = parts
    check_key_name(name)
    try:
        material = base64.b64decode(encoded, validate=True)
        public = Ed25519PublicKey.from_public_bytes(material[1:])
    except (binascii.Error, ValueError):
        raise NoteError(
            f"verifier key {name}: its key is not base64 of a type and an Ed25519 key"
        ) from None
    kind = material[0]
    if kind not in (ED25519_TYPE, COSIGNATURE_TYPE) or len(material) != 33:
        raise NoteError(f"verifier key {name}: type {kind:#04x} is not Ed25519 (0x01 or 0x04)")
    if key_hash(name, public, kind).hex() != hex_id.lower():
        raise NoteError(f"verifier key {name}: key ID {hex_id} does not match its key")
    return name, kind, public


@dataclass(frozen=True)
class SignatureLine:
    """One signature line of a note: key name, key ID and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_DASH}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"

    @classmethod
    def parse(cls, line: str) -> SignatureLine:
        """Read one signature line (with or without its newline)."""
        line = line.removesuffix("\n")
        if not line.startswith(_DASH):
            raise NoteError(f"signature line {line[:40]!r} does not start with an em dash")
        if "\n" in line or any(ord(c) < 0x20 for c in line):
            raise NoteError("a signature line holds one line and no control characters")
        name, _, encoded = line[len(_DASH) :].partition(" ")
        check_key_name(name)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError(f"the signature of {name} is not base64") from None
        if len(raw) < 5:
            raise NoteError(f"the signature of {name} is too short")
        return cls(name, raw[:4], raw[4:])


def _split(note: str) -> tuple[str, str]:
    """The note's text (with its final newline) and its signature block."""
    for char in note:
        if ord(char) < 0x20 and char != "\n":
            raise NoteError("a signed note must not hold control characters other than newline")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise NoteError("a signed note is a text, a blank line and signature lines")
    return note[: split + 1], note[split + 2 :]


def signature_lines(note: str) -> tuple[str, list[SignatureLine]]:
    """A note's text and its signature lines, in order; :class:`NoteError` if malformed."""
    text, block = _split(note)
    lines = block[:-1].split("\n") if block else []
    if not lines:
        raise NoteError("a signed note needs at least one signature line")
    if len(lines) > _MAX_SIGNATURES:
        raise NoteError(f"a signed note with {len(lines)} signatures (at most {_MAX_SIGNATURES})")
    return text, [SignatureLine.parse(line) for line in lines]


def note_text(note: str) -> str:
    """The signed text of a note, without its signatures."""
    return signature_lines(note)[0]


def sign_note(text: str, name: str, signer: Ed25519PrivateKey) -> str:
    """The note ``text`` signed by ``signer`` under ``name`` (an Ed25519 note signature)."""
    _check_text(text)
    line = SignatureLine(
        name, key_hash(name, signer.public_key()), signer.sign(text.encode("utf-8"))
    )
    return f"{text}\n{line.line()}"


def _check_text(text: str) -> None:
    if not text.endswith("\n") or any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note's text must end in a newline and hold no control characters")


def verify_signature(note: str, name: str, public: Ed25519PublicKey) -> str:
    """Check that ``public`` signed ``note`` under ``name``; return the signed text.

    Other signatures (witnesses', unknown keys) are ignored, as the note
    format requires.
    """
    text, lines = signature_lines(note)
    verify_signed(text, lines, name, public)
    return text


def verify_signed(
    text: str, lines: list[SignatureLine], name: str, public: Ed25519PublicKey
) -> None:
    """:func:`verify_signature` on a note already split by :func:`signature_lines`."""
    wanted = key_hash(name, public)
    mine = [s for s in lines if s.name == name and s.key_id == wanted]
    if not mine:
        raise NoteError(f"the note carries no signature by {name} (key ID {wanted.hex()})")
    for line in mine:
        try:
            public.verify(line.signature, text.encode("utf-8"))
        except InvalidSignature:
            raise NoteError(f"the signature by {name} on the note does not verify") from None


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def cosign(text: str, name: str, signer: Ed25519PrivateKey, timestamp: int) -> SignatureLine:
    """A ``cosignature/v1`` line by witness ``name`` on the checkpoint ``text`` at ``timestamp``."""
    _check_text(text)
    if not 0 <= timestamp < 2**63:
        raise NoteError(f"cosignature time {timestamp} is not a POSIX time")
    signature = signer.sign(_cosigned_message(text, timestamp))
    return SignatureLine(
        name,
        key_hash(name, signer.public_key(), COSIGNATURE_TYPE),
        struct.pack(">Q", timestamp) + signature,
    )


def cosignature_time(line: SignatureLine) -> int:
    """The POSIX time a cosignature line states (not checked: see :func:`verify_cosignature`)."""
    if len(line.signature) != 72:
        raise NoteError(f"the cosignature of {line.name} is not 8 + 64 bytes")
    return int(struct.unpack(">Q", line.signature[:8])[0])


def verify_cosignature(text: str, line: SignatureLine, public: Ed25519PublicKey) -> int:
    """Check a ``cosignature/v1`` line on the checkpoint ``text``; return its time."""
    if line.key_id != key_hash(line.name, public, COSIGNATURE_TYPE):
        raise NoteError(f"the cosignature of {line.name} is not by the key it is checked with")
    timestamp = cosignature_time(line)
    if timestamp >= 2**63:
        raise NoteError(f"the cosignature of {line.name} states time {timestamp}")
    try:
        public.verify(line.signature[8:], _cosigned_message(text, timestamp))
    except InvalidSignature:
        raise NoteError(f"the cosignature of {line.name} does not verify") from None
    return timestamp


@dataclass(frozen=True)
class CheckpointBody:
    """What a checkpoint states, before it is signed: its note text's origin, tree size, root.

    The checkpoint itself is the signed note whose text this is
    (c2sp.org/tlog-checkpoint calls the text the checkpoint's body).
    """

    origin: str
    tree_size: int
    root: bytes

    def text(self) -> str:
        check_key_name(self.origin)
        if len(self.root) != 32 or self.tree_size < 0:
            raise NoteError("a checkpoint needs a 32-byte root and a tree size of 0 or more")
        return f"{self.origin}\n{self.tree_size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> CheckpointBody:
        """Read a checkpoint's text (extension lines refused: FedCommons never writes any)."""
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise NoteError(
                "a checkpoint is three lines (origin, tree size, root): "
                f"got {len(lines) - 1} line(s)"
            )
        origin, size, root = lines[:3]
        if not origin or any(c.isspace() or c == "+" for c in origin):
            raise NoteError(f"checkpoint origin {origin!r} is empty or holds spaces or '+'")
        if not _DECIMAL.match(size):
            raise NoteError(f"checkpoint tree size {size!r} is not a decimal without leading zeros")
        try:
            digest = base64.b64decode(root, validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) != 32 or base64.b64encode(digest).decode() != root:
            raise NoteError(f"checkpoint root {root!r} is not base64 of a 32-byte hash")
        return cls(origin, int(size), digest)

"""Private and public key files: written owner-only, loaded with clear errors.

Every private key FedCommons writes is a PEM PKCS#8 file created with mode
0600, optionally encrypted with a passphrase. Loading refuses a key that
others can read, a wrong or missing passphrase, and a corrupt file, each with
a message that says what to do. Public keys travel as base64 of their raw
32 bytes (Ed25519, X25519); a key's id is the SHA-256 of those bytes.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.errors import UserError

__all__ = [
    "PASSPHRASE_ENV",
    "KeyFileError",
    "decode_ed25519_public",
    "decode_x25519_public",
    "encode_public",
    "key_id",
    "load_ec_key",
    "load_ed25519_key",
    "load_private_key",
    "load_supernode_key",
    "load_x25519_key",
    "passphrase_for_new_keys",
    "passphrase_from_env",
    "write_private_file",
    "write_private_key",
    "write_supernode_key",
]

PASSPHRASE_ENV = "FEDCOMMONS_KEY_PASSPHRASE"
"""Environment variable a process reads the passphrase of its encrypted keys from."""

PrivateKey = Ed25519PrivateKey | X25519PrivateKey | ec.EllipticCurvePrivateKey


class KeyFileError(UserError, ValueError):
    """A key file is missing, unsafe, corrupt, or needs another passphrase."""


def passphrase_from_env() -> str | None:
    """The passphrase in ``$FEDCOMMONS_KEY_PASSPHRASE``, or ``None`` if unset or empty."""
    return os.environ.get(PASSPHRASE_ENV) or None


def passphrase_for_new_keys(encrypt: bool) -> str | None:
    """The passphrase to encrypt new keys with: ``None`` unless ``encrypt``.

    ``$FEDCOMMONS_KEY_PASSPHRASE`` if set, else asked twice on the terminal
    (never echoed).
    """
    if not encrypt:
        return None
    from_env = passphrase_from_env()
    if from_env:
        return from_env
    first = getpass.getpass("Passphrase for the new private keys: ")
    if first != getpass.getpass("Repeat it: "):
        raise KeyFileError("the two passphrases differ; nothing was written")
    if not first:
        raise KeyFileError("an empty passphrase protects nothing: give a real one or none")
    return first


def write_private_file(path: Path, data: bytes) -> Path:
    """Create ``path`` with mode 0600 and write ``data``; never overwrite a key.

    Raises
    ------
    KeyFileError
        If the file exists already (an existing key is never replaced).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{path} exists already: FedCommons never overwrites a key "
            "(move it away first if you really mean to replace it)"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # the umask may have narrowed it further; make it exact
    return path


def write_private_key(path: Path, key: PrivateKey, *, passphrase: str | None = None) -> Path:
    """Write ``key`` as PEM PKCS#8 with mode 0600, encrypted if a passphrase is given."""
    if passphrase is not None and not passphrase:
        raise KeyFileError("an empty passphrase protects nothing: give a real one or none")
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return write_private_file(path, data)


def write_supernode_key(private_path: Path, public_path: Path) -> ec.EllipticCurvePublicKey:
    """A Flower SuperNode authentication key pair: ECDSA P-384, both in OpenSSH format.

    The private key is unencrypted, mode 0600: Flower's SuperNode reads it
    itself (``--auth-supernode-private-key``) and cannot ask for a
    passphrase. The public key is what ``flwr supernode register`` takes.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    write_private_file(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key()
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b"\n"
    )
    return public


def _check_permissions(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path} has mode {mode:04o}: a private key must be readable by its owner "
            f"only; run 'chmod 600 {path}' (and check who else could have read it)"
        )


def load_ed25519_key(path: Path, *, passphrase: str | None = None) -> Ed25519PrivateKey:
    """Load an Ed25519 signing key (see :func:`load_private_key`)."""
    key = load_private_key(path, passphrase=passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong_kind(path, key, "Ed25519 signing key")
    return key


def load_x25519_key(path: Path, *, passphrase: str | None = None) -> X25519PrivateKey:
    """Load an X25519 key-agreement key (see :func:`load_private_key`)."""
    key = load_private_key(path, passphrase=passphrase)
    if not isinstance(key, X25519PrivateKey):
        raise _wrong_kind(path, key, "X25519 aggregator key")
    return key


def load_ec_key(path: Path, *, passphrase: str | None = None) -> ec.EllipticCurvePrivateKey:
    """Load an ECDSA key (TLS, SuperNode authentication; see :func:`load_private_key`)."""
    key = load_private_key(path, passphrase=passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise _wrong_kind(path, key, "ECDSA key")
    return key


def load_supernode_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the SuperNode authentication key :func:`write_supernode_key` wrote (OpenSSH).

    Flower's SuperNode reads this file itself; loading it first turns a
    missing, exposed, truncated or foreign file into an error that names it,
    rather than a SuperLink that seems unreachable.

    Raises
    ------
    KeyFileError
        Missing file, permissions wider than 0600, or not an OpenSSH ECDSA
        private key (corrupt, truncated, or another kind of key).
    """
    if not path.is_file():
        raise KeyFileError(f"no key file at {path}")
    _check_permissions(path)
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise KeyFileError(
            f"{path} is not a readable SuperNode key (truncated or corrupt: {err})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise _wrong_kind(path, key, "ECDSA SuperNode key")
    return key


def _wrong_kind(path: Path, key: object, expected: str) -> KeyFileError:
    return KeyFileError(
        f"{path} holds a {type(key).__name__.lstrip('_')}, not an {expected}: is it the right file?"
    )


def load_private_key(path: Path, *, passphrase: str | None = None) -> PrivateKeyTypes:
    """Load a private key written by :func:`write_private_key`.

    Parameters
    ----------
    path : Path
        The PEM file.
    passphrase : str or None (default: None)
        Needed if and only if the key was written with one.

    Raises
    ------
    KeyFileError
        Missing file, permissions wider than 0600, missing or wrong
        passphrase, or corrupt data.
    """
    if not path.is_file():
        raise KeyFileError(f"no key file at {path}")
    _check_permissions(path)
    data = path.read_bytes()
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    if encrypted and not passphrase:
        raise KeyFileError(
            f"{path} is protected by a passphrase: give it (for a node or the "
            f"server, in ${PASSPHRASE_ENV})"
        )
    if not data.startswith(b"-----BEGIN ") or b"PRIVATE KEY-----" not in data:
        raise KeyFileError(f"{path} is not a PEM private key (corrupt or not a key file)")
    try:
        key = serialization.load_pem_private_key(
            data, passphrase.encode() if encrypted and passphrase else None
        )
    except ValueError as err:
        if encrypted:
            raise KeyFileError(f"wrong passphrase for {path} (or the file is corrupt)") from err
        raise KeyFileError(f"{path} is corrupt: {err}") from err
    except TypeError as err:  # a passphrase given for a plain key is fine; others are not
        raise KeyFileError(f"cannot load {path}: {err}") from err
    except Exception as err:  # cryptography raises UnsupportedAlgorithm and friends
        raise KeyFileError(f"{path} is corrupt or unsupported: {err}") from err
    return key


def encode_public(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """Base64 of the raw 32 public-key bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """SHA-256 (hex) of the raw public-key bytes: how the ledger names a key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _raw32(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise KeyFileError(f"{what} is not base64: {err}") from err
    if len(raw) != 32:
        raise KeyFileError(f"{what} has {len(raw)} bytes; a raw public key has 32")
    return raw


def decode_ed25519_public(text: str, what: str = "the signing key") -> Ed25519PublicKey:
    """Parse :func:`encode_public` output back into an Ed25519 public key."""
    return Ed25519PublicKey.from_public_bytes(_raw32(text, what))


def decode_x25519_public(text: str, what: str = "the aggregator key") -> X25519PublicKey:
    """Parse :func:`encode_public` output back into an X25519 public key."""
    return X25519PublicKey.from_public_bytes(_raw32(text, what))

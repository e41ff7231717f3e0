"""Opening the sealed updates of one run: every check, in a fixed order.

For each envelope the :class:`UpdateGate` checks, and stops at the first
failure:

1. the header parses (``malformed``);
2. it names an admitted participant (``unknown-participant``);
3. the signature verifies with that participant's registered key (``bad-signature``);
   it was not accepted before, in this run or an earlier one (``replay``);
4. the header is bound to this run, this round and the model the server sent
   (``wrong-run``, ``replay`` for an earlier round, ``wrong-round``, ``wrong-model``);
5. it is the participant's first update this round (``duplicate``);
6. it decrypts (``undecryptable``);
7. the tensors have the expected names, shapes and dtypes and are finite
   (``malformed-tensors``, ``wrong-names``, ``wrong-shape``, ``wrong-dtype``,
   ``non-finite``).

A failure raises :class:`~common.envelope.EnvelopeError` with that reason;
the strategy rejects that update only and records the reason in the ledger.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from safetensors import SafetensorError
from safetensors.numpy import load

from common.arrays import Arrays, arrays_to_bytes
from common.envelope import Envelope, EnvelopeError, UpdateHeader, decrypt, verify_signature
from common.keys import key_id

__all__ = ["OpenedUpdate", "TensorSpec", "UpdateGate", "expected_tensors"]

TensorSpec = tuple[tuple[int, ...], str]
"""A tensor's shape and NumPy dtype name."""


def expected_tensors(arrays: Arrays) -> dict[str, TensorSpec]:
    """The names, shapes and dtypes an update of ``arrays`` must have."""
    return {name: (tuple(a.shape), a.dtype.name) for name, a in arrays.items()}


@dataclass(frozen=True)
class OpenedUpdate:
    """A verified, decrypted update and the evidence the ledger keeps of it."""

    header: UpdateHeader
    arrays: Arrays
    plaintext_sha256: str
    ciphertext_sha256: str
    signature: str
    """Base64 of the Ed25519 signature."""
    signer_key_id: str
    """Id of the participant's registered key, which verified the signature."""
    arrays_sha256: str
    """:func:`common.model.arrays_sha256` of ``arrays``: the update's canonical identity."""
    arrays_bytes: int
    """Size of ``arrays`` serialised canonically (what travelled, before sealing)."""


class UpdateGate:
    """Verifies and decrypts the sealed updates of one run.

    Parameters
    ----------
    flower_run_id : str
        The id of the Flower run carrying this run; an update bound to another
        Flower run is rejected.
    aggregator_key : X25519PrivateKey
        The aggregator's private key, which updates are encrypted to.
    participants : mapping of str to Ed25519PublicKey
        Admitted participants and their registered signing keys.
    expected : mapping of str to TensorSpec
        Names, shapes and dtypes of the trainable parameters.
    base_model_sha256 : str
        Hash of the frozen base model every update must be built on.
    accepted_before : iterable of str, optional
        Ciphertext hashes of updates the ledger already holds: the replay
        memory, so an envelope accepted before a crash is refused after it.
    left_out : mapping of str to (Ed25519PublicKey, str), optional
        Members suspended when the run started, with their admitted key and
        the reason: an update one of them signed is refused as ``suspended``
        (not ``unknown-participant``), so the node it came from is known.
    """

    def __init__(
        self,
        *,
        flower_run_id: str,
        aggregator_key: X25519PrivateKey,
        participants: Mapping[str, Ed25519PublicKey],
        expected: Mapping[str, TensorSpec],
        base_model_sha256: str,
        accepted_before: Iterable[str] = (),
        left_out: Mapping[str, tuple[Ed25519PublicKey, str]] | None = None,
    ) -> None:
        self.flower_run_id = flower_run_id
        self.left_out = dict(left_out or {})
        self.aggregator_key = aggregator_key
        self.participants = dict(participants)
        self.expected = dict(expected)
        self.base_model_sha256 = base_model_sha256
        self.round = 0
        self.round_flower_run_id = flower_run_id
        self.model_sha256 = ""
        self._seen: set[str] = set()
        self._accepted = set(accepted_before)  # ciphertext hashes, from the ledger on resume
        self._this_round: set[str] = set()  # a second copy this round is a "duplicate"

    def begin_round(
        self, server_round: int, model_sha256: str, flower_run_id: str | None = None
    ) -> None:
        """Expect updates for ``server_round`` trained from the model with ``model_sha256``.

        ``flower_run_id``: the Flower run this round's updates are bound to, if
        not this one (a round recovered from the replies a crashed run kept).
        """
        if server_round <= self.round:
            raise ValueError(f"round {server_round} does not follow round {self.round}")
        self.round, self.model_sha256 = server_round, model_sha256
        self.round_flower_run_id = (
            flower_run_id if flower_run_id is not None else self.flower_run_id
        )
        self._seen.clear()
        self._accepted |= self._this_round  # from now on, the last round's are replays
        self._this_round = set()

    def open(self, envelope: Envelope) -> OpenedUpdate:
        """Run every check on ``envelope``; :class:`EnvelopeError` names the first failure."""
        header = UpdateHeader.parse(envelope.header)
        public = self.participants.get(header.participant)
        if public is None and header.participant in self.left_out:
            key, reason = self.left_out[header.participant]
            verify_signature(envelope, key)  # only the member itself is taken for suspended
            raise EnvelopeError(
                "suspended",
                f"{header.participant!r} is suspended and left out of this run ({reason})",
            )
        if public is None:
            raise EnvelopeError(
                "unknown-participant",
                f"{header.participant!r} is not an admitted participant of this consortium",
            )
        verify_signature(envelope, public)
        ciphertext_sha256 = envelope.ciphertext_sha256()
        if ciphertext_sha256 in self._accepted:
            raise EnvelopeError(
                "replay",
                f"this update from {header.participant!r} (ciphertext {ciphertext_sha256[:16]}..."
                ") was accepted before, in an earlier round or run: a replay",
            )
        self._check_binding(header)
        if header.participant in self._seen:
            raise EnvelopeError(
                "duplicate",
                f"a second update from {header.participant!r} in round {self.round}",
            )
        self._seen.add(header.participant)
        plaintext = decrypt(envelope, header, self.aggregator_key)
        arrays = self._tensors(plaintext)
        canonical = arrays_to_bytes(arrays)  # serialised once, for its hash and size
        self._this_round.add(ciphertext_sha256)
        return OpenedUpdate(
            header=header,
            arrays=arrays,
            plaintext_sha256=hashlib.sha256(plaintext).hexdigest(),
            ciphertext_sha256=ciphertext_sha256,
            signature=base64.b64encode(envelope.signature).decode(),
            signer_key_id=key_id(public),  # the registered key that verified it
            arrays_sha256=hashlib.sha256(canonical).hexdigest(),
            arrays_bytes=len(canonical),
        )

    def _check_binding(self, header: UpdateHeader) -> None:
        if header.run_id != self.round_flower_run_id:
            raise EnvelopeError(
                "wrong-run",
                f"the update is for Flower run {header.run_id}, this is Flower run "
                f"{self.round_flower_run_id}",
            )
        if header.round < self.round:
            raise EnvelopeError(
                "replay", f"an update from round {header.round} replayed in round {self.round}"
            )
        if header.round != self.round:
            raise EnvelopeError(
                "wrong-round", f"the update claims round {header.round}; this is {self.round}"
            )
        if header.model_sha256 != self.model_sha256:
            raise EnvelopeError(
                "wrong-model",
                f"trained from model {header.model_sha256[:16]}..., not this round's "
                f"global model {self.model_sha256[:16]}...",
            )
        if header.base_model_sha256 != self.base_model_sha256:
            raise EnvelopeError(
                "wrong-model",
                f"built on base model {header.base_model_sha256[:16]}..., not "
                f"{self.base_model_sha256[:16]}...",
            )

    def _tensors(self, plaintext: bytes) -> Arrays:
        try:
            arrays: Arrays = dict(load(plaintext))
        except (SafetensorError, ValueError, TypeError) as err:
            raise EnvelopeError(
                "malformed-tensors", f"the plaintext is not safetensors: {err}"
            ) from err
        if set(arrays) != set(self.expected):
            missing = sorted(set(self.expected) - set(arrays))
            extra = sorted(set(arrays) - set(self.expected))
            raise EnvelopeError("wrong-names", f"missing {missing}, unexpected {extra}")
        for name, (shape, dtype) in self.expected.items():
            array = arrays[name]
            if tuple(array.shape) != shape:
                raise EnvelopeError(
                    "wrong-shape", f"'{name}' has shape {tuple(array.shape)}, expected {shape}"
                )
            if array.dtype.name != dtype:
                raise EnvelopeError(
                    "wrong-dtype", f"'{name}' has dtype {array.dtype.name}, expected {dtype}"
                )
            if not np.all(np.isfinite(array)):
                raise EnvelopeError("non-finite", f"'{name}' holds NaN or infinite values")
        return {name: arrays[name] for name in self.expected}  # the model's order

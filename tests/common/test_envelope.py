"""The update envelope and the server's checks: real X25519/HKDF/AES-GCM/Ed25519.

Every rejection path is exercised with a real sealed update and must fail
with its own reason code, in the order :mod:`server.app.strategy.intake` documents.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord
from safetensors.numpy import save

from common.arrays import Arrays, arrays_sha256, arrays_to_bytes
from common.envelope import (
    Envelope,
    EnvelopeError,
    UpdateHeader,
    decrypt,
    envelope_of,
    envelope_record,
    seal,
)
from common.keys import key_id
from common.protocol import PrivacyCharge
from server.app.strategy.gate import UpdateGate, expected_tensors

RUN = "1234567890123456789"
MODEL = "a" * 64
BASE = "b" * 64

WEIGHTS: Arrays = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 10,
    "fc.bias": np.array([0.5, -1.25], dtype=np.float32),
}
CHARGE = PrivacyCharge(True, 2.5, 1e-5, 1.1, 0.2, 40, "rdp", 1.0, "d" * 64, "h" * 64)


def header(**changes: object) -> UpdateHeader:
    values: dict[str, object] = {
        "run_id": RUN,
        "round": 3,
        "participant": "university-a",
        "model_sha256": MODEL,
        "base_model_sha256": BASE,
        "num_examples": 420,
        "privacy": CHARGE,
    }
    values.update(changes)
    return UpdateHeader(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def keys() -> dict[str, object]:
    return {
        "aggregator": X25519PrivateKey.generate(),
        "a": Ed25519PrivateKey.generate(),
        "b": Ed25519PrivateKey.generate(),
    }


def make_gate(keys: dict[str, object], round_number: int = 3) -> UpdateGate:
    gate = UpdateGate(
        flower_run_id=RUN,
        aggregator_key=keys["aggregator"],  # type: ignore[arg-type]
        participants={
            "university-a": keys["a"].public_key(),  # type: ignore[attr-defined]
            "university-b": keys["b"].public_key(),  # type: ignore[attr-defined]
        },
        expected=expected_tensors(WEIGHTS),
        base_model_sha256=BASE,
    )
    for number in range(1, round_number + 1):
        gate.begin_round(number, MODEL)
    return gate


def sealed(
    keys: dict[str, object],
    *,
    weights: Arrays | None = None,
    plaintext: bytes | None = None,
    signer: str = "a",
    **changes: object,
) -> Envelope:
    data = plaintext if plaintext is not None else arrays_to_bytes(weights or WEIGHTS)
    return seal(
        data,
        header(**changes),
        aggregator=keys["aggregator"].public_key(),  # type: ignore[attr-defined]
        signer=keys[signer],  # type: ignore[arg-type]
    )


def reason_of(gate: UpdateGate, envelope: Envelope) -> str:
    with pytest.raises(EnvelopeError) as err:
        gate.open(envelope)
    return err.value.reason


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- round trip ---------------------------------------------------------------


def test_round_trip_returns_the_exact_tensors_and_evidence(keys: dict[str, object]) -> None:
    envelope = sealed(keys)
    opened = make_gate(keys).open(envelope)
    assert opened.header == header()
    assert opened.header.privacy == CHARGE
    for name, value in WEIGHTS.items():
        np.testing.assert_array_equal(opened.arrays[name], value)
        assert opened.arrays[name].dtype == value.dtype
    assert arrays_sha256(opened.arrays) == arrays_sha256(WEIGHTS)
    assert opened.signer_key_id == key_id(keys["a"].public_key())  # type: ignore[attr-defined]
    assert len(envelope.signature) == 64
    # the ciphertext hides the plaintext: no tensor's bytes appear in it
    for value in WEIGHTS.values():
        assert value.tobytes() not in envelope.ciphertext


def test_two_seals_of_the_same_update_differ(keys: dict[str, object]) -> None:
    first, second = sealed(keys), sealed(keys)
    assert first.header == second.header
    assert first.ciphertext != second.ciphertext  # fresh ephemeral key, salt and nonce


def test_the_header_survives_infinite_epsilon_and_is_canonical() -> None:
    no_dp = dataclasses.replace(CHARGE, dp=False, epsilon=math.inf)
    text = header(privacy=no_dp).canonical()
    assert b'"epsilon":"inf"' in text
    assert UpdateHeader.parse(text).privacy.epsilon == math.inf
    spaced = text.replace(b",", b", ")
    with pytest.raises(EnvelopeError, match="canonical") as err:
        UpdateHeader.parse(spaced)
    assert err.value.reason == "malformed"


def test_the_flower_record_round_trips(keys: dict[str, object]) -> None:
    envelope = sealed(keys)
    assert envelope_of(envelope_record(envelope)) == envelope


# -- tampering: a single flipped bit ------------------------------------------


@pytest.mark.parametrize(
    ("part", "where"),
    [
        ("ciphertext", -1),  # inside the AES-GCM tag
        ("ciphertext", 5),  # inside the encrypted update
        ("kem", 70),  # inside the nonce (bytes 64-75)
        ("kem", 40),  # inside the HKDF salt (bytes 32-63)
        ("kem", 3),  # inside the ephemeral public key
        ("header", 20),
        ("signature", 10),
    ],
)
def test_a_single_flipped_bit_is_rejected(keys: dict[str, object], part: str, where: int) -> None:
    envelope = sealed(keys)
    value = getattr(envelope, part)
    tampered = dataclasses.replace(envelope, **{part: flip(value, where % len(value))})  # type: ignore[arg-type]
    reason = reason_of(make_gate(keys), tampered)
    # a flipped header byte may also break its JSON; never does it get through
    assert reason in ({"bad-signature", "malformed"} if part == "header" else {"bad-signature"})


def resigned(keys: dict[str, object], envelope: Envelope, **changes: bytes) -> Envelope:
    """``envelope`` changed and signed again by its own participant."""
    changed = dataclasses.replace(envelope, **changes)  # type: ignore[arg-type]
    signature = keys["a"].sign(changed.signed_digest())  # type: ignore[attr-defined]
    return dataclasses.replace(changed, signature=signature)


@pytest.mark.parametrize(("part", "where"), [("kem", 70), ("kem", 40), ("ciphertext", 5)])
def test_a_re_signed_flip_still_fails_decryption(
    keys: dict[str, object], part: str, where: int
) -> None:
    """Even the participant itself, re-signing, cannot change nonce, salt or ciphertext."""
    envelope = sealed(keys)
    forged = resigned(keys, envelope, **{part: flip(getattr(envelope, part), where)})
    assert reason_of(make_gate(keys), forged) == "undecryptable"


def test_a_header_changed_and_re_signed_no_longer_matches_the_aad(
    keys: dict[str, object],
) -> None:
    """AAD binding: the sender cannot move a ciphertext under another header."""
    envelope = sealed(keys)
    forged = resigned(keys, envelope, header=header(num_examples=999).canonical())
    assert reason_of(make_gate(keys), forged) == "undecryptable"


# -- identity and binding -----------------------------------------------------


def test_wrong_aggregator_key_cannot_decrypt(keys: dict[str, object]) -> None:
    envelope = seal(
        arrays_to_bytes(WEIGHTS),
        header(),
        aggregator=X25519PrivateKey.generate().public_key(),
        signer=keys["a"],  # type: ignore[arg-type]
    )
    assert reason_of(make_gate(keys), envelope) == "undecryptable"
    with pytest.raises(EnvelopeError, match="another aggregator key"):
        decrypt(envelope, header(), keys["aggregator"])  # type: ignore[arg-type]


def test_participant_a_s_update_signed_by_b_is_rejected(keys: dict[str, object]) -> None:
    assert reason_of(make_gate(keys), sealed(keys, signer="b")) == "bad-signature"


def test_an_unknown_participant_is_rejected_before_its_signature_is_checked(
    keys: dict[str, object],
) -> None:
    envelope = sealed(keys, participant="company-z")
    assert reason_of(make_gate(keys), envelope) == "unknown-participant"


def test_an_update_replayed_from_an_earlier_round_is_rejected(keys: dict[str, object]) -> None:
    gate = make_gate(keys, round_number=2)
    old = sealed(keys, round=2)
    gate.open(old)  # accepted in its own round
    gate.begin_round(3, MODEL)
    assert reason_of(gate, old) == "replay"


def test_an_update_for_another_run_round_or_model_is_rejected(keys: dict[str, object]) -> None:
    gate = make_gate(keys)
    assert reason_of(gate, sealed(keys, run_id="42")) == "wrong-run"
    assert reason_of(gate, sealed(keys, round=4)) == "wrong-round"
    assert reason_of(gate, sealed(keys, model_sha256="c" * 64)) == "wrong-model"
    assert reason_of(gate, sealed(keys, base_model_sha256="c" * 64)) == "wrong-model"


def test_the_same_participant_twice_in_one_round_is_rejected(keys: dict[str, object]) -> None:
    gate = make_gate(keys)
    gate.open(sealed(keys))
    assert reason_of(gate, sealed(keys)) == "duplicate"
    gate.open(sealed(keys, signer="b", participant="university-b"))  # others still welcome


# -- payloads -----------------------------------------------------------------


def test_truncated_and_garbage_envelopes_are_malformed(keys: dict[str, object]) -> None:
    envelope = sealed(keys)
    gate = make_gate(keys)
    truncated_header = dataclasses.replace(envelope, header=envelope.header[:-5])
    assert reason_of(gate, truncated_header) == "malformed"
    garbage = Envelope(b"\x00\xff" * 40, b"\x07" * 76, b"\x13" * 200, b"\x01" * 64, "x")
    assert reason_of(gate, garbage) == "malformed"
    # a truncated ciphertext or kem breaks the signature ...
    short = envelope.ciphertext[:10]
    assert reason_of(gate, dataclasses.replace(envelope, ciphertext=short)) == "bad-signature"
    assert reason_of(gate, dataclasses.replace(envelope, kem=envelope.kem[:40])) == "bad-signature"
    # ... and, re-signed by the participant, is too short to open
    assert reason_of(make_gate(keys), resigned(keys, envelope, ciphertext=short)) == "malformed"
    assert reason_of(make_gate(keys), resigned(keys, envelope, kem=envelope.kem[:40])) == (
        "malformed"
    )


@pytest.mark.parametrize(
    "record",
    [
        None,
        ConfigRecord(
            {"header": "text", "kem": b"", "ciphertext": b"", "signature": b"", "signer-key-id": ""}
        ),
        ConfigRecord(
            {"header": b"{}", "kem": b"", "ciphertext": b"", "signature": b"x", "signer-key-id": ""}
        ),
        ConfigRecord({"header": b"{}", "ciphertext": b"", "signature": b"x" * 64}),
    ],
)
def test_a_reply_without_a_well_formed_envelope_record_is_malformed(
    record: ConfigRecord | None,
) -> None:
    with pytest.raises(EnvelopeError) as err:
        envelope_of(record)
    assert err.value.reason == "malformed"


def test_plaintext_that_is_not_safetensors_is_rejected(keys: dict[str, object]) -> None:
    envelope = sealed(keys, plaintext=b"\x80\x04pickle-looking bytes")
    assert reason_of(make_gate(keys), envelope) == "malformed-tensors"


def test_nan_and_inf_tensors_are_rejected(keys: dict[str, object]) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        weights = {**WEIGHTS, "fc.bias": np.array([0.5, bad], dtype=np.float32)}
        assert reason_of(make_gate(keys), sealed(keys, weights=weights)) == "non-finite"


def test_wrong_names_shapes_and_dtypes_are_rejected(keys: dict[str, object]) -> None:
    gate = make_gate
    missing = {"conv.weight": WEIGHTS["conv.weight"]}
    assert reason_of(gate(keys), sealed(keys, weights=missing)) == "wrong-names"
    extra = {**WEIGHTS, "backdoor": np.zeros(1, np.float32)}
    assert reason_of(gate(keys), sealed(keys, weights=extra)) == "wrong-names"
    reshaped = {**WEIGHTS, "conv.weight": WEIGHTS["conv.weight"].reshape(6, 4)}
    assert reason_of(gate(keys), sealed(keys, weights=reshaped)) == "wrong-shape"
    doubled = {**WEIGHTS, "fc.bias": WEIGHTS["fc.bias"].astype(np.float64)}
    assert reason_of(gate(keys), sealed(keys, weights=doubled)) == "wrong-dtype"
    # raw safetensors with the right names is what passes
    assert gate(keys).open(sealed(keys, plaintext=save(dict(WEIGHTS)))).arrays.keys() == (
        WEIGHTS.keys()
    )

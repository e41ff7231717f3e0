"""C2SP signed notes, checkpoints and cosignatures (:mod:`common.note`)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.note import (
    COSIGNATURE_TYPE,
    CheckpointBody,
    NoteError,
    SignatureLine,
    cosign,
    parse_verifier_key,
    sign_note,
    signature_lines,
    verifier_key,
    verify_cosignature,
    verify_signature,
)

# The example of c2sp.org/signed-note: this verifier key verifies this note.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
ROOT = bytes(range(32))


def test_the_specifications_example_note_verifies() -> None:
    name, kind, public = parse_verifier_key(SPEC_VKEY)
    assert (name, kind) == ("example.com/foo", 1)
    assert verifier_key(name, public) == SPEC_VKEY
    assert verify_signature(SPEC_NOTE, name, public) == "This is an example message.\n"
    with pytest.raises(NoteError, match="does not verify"):
        verify_signature(SPEC_NOTE.replace("example message", "example massage"), name, public)


def test_a_note_signed_here_verifies_and_ignores_other_signatures() -> None:
    operator, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    text = CheckpointBody("fedcommons.example/log", 7, ROOT).text()
    note = sign_note(text, "fedcommons.example/log", operator)
    witness = cosign(text, "university-a", other, 1_700_000_000)
    cosigned = note + witness.line()
    assert verify_signature(cosigned, "fedcommons.example/log", operator.public_key()) == text
    with pytest.raises(NoteError, match="no signature by"):
        verify_signature(cosigned, "fedcommons.example/log", other.public_key())
    _, lines = signature_lines(cosigned)
    assert [s.name for s in lines] == ["fedcommons.example/log", "university-a"]
    assert verify_cosignature(text, lines[1], other.public_key()) == 1_700_000_000


def test_a_cosignature_is_bound_to_its_checkpoint_key_and_time() -> None:
    witness = Ed25519PrivateKey.generate()
    text = CheckpointBody("log.example", 3, ROOT).text()
    line = cosign(text, "company-b", witness, 1_800_000_000)
    assert len(line.key_id) == 4 and len(line.signature) == 72
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(
            CheckpointBody("log.example", 4, ROOT).text(), line, witness.public_key()
        )
    later = SignatureLine(
        line.name, line.key_id, (1_800_000_001).to_bytes(8, "big") + line.signature[8:]
    )
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(text, later, witness.public_key())
    with pytest.raises(NoteError, match="not by the key"):
        verify_cosignature(text, line, Ed25519PrivateKey.generate().public_key())
    short = SignatureLine(line.name, line.key_id, line.signature[:40])
    with pytest.raises(NoteError, match="8 \\+ 64"):
        verify_cosignature(text, short, witness.public_key())
    vkey = verifier_key("company-b", witness.public_key(), COSIGNATURE_TYPE)
    assert parse_verifier_key(vkey)[1] == COSIGNATURE_TYPE


def test_checkpoint_text_round_trips() -> None:
    body = CheckpointBody("fedcommons.example/consortium/abc", 20852163, ROOT)
    text = body.text()
    assert text == (
        f"fedcommons.example/consortium/abc\n20852163\n{base64.b64encode(ROOT).decode()}\n"
    )
    assert CheckpointBody.parse(text) == body
    assert CheckpointBody.parse("o\n0\n" + base64.b64encode(ROOT).decode() + "\n").tree_size == 0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("origin\n7\n", "three lines"),
        ("origin\n7\nAAAA\n", "32-byte"),
        ("origin\n07\n" + base64.b64encode(ROOT).decode() + "\n", "leading zeros"),
        ("origin\n-1\n" + base64.b64encode(ROOT).decode() + "\n", "decimal"),
        ("origin\nseven\n" + base64.b64encode(ROOT).decode() + "\n", "decimal"),
        ("two words\n7\n" + base64.b64encode(ROOT).decode() + "\n", "origin"),
        ("origin\n7\n" + base64.b64encode(ROOT).decode() + "\nextension\n", "three lines"),
        ("origin\n7\n" + base64.b64encode(ROOT).decode(), "three lines"),
        ("\n7\n" + base64.b64encode(ROOT).decode() + "\n", "origin"),
    ],
)
def test_malformed_checkpoints_are_refused(text: str, error: str) -> None:
    with pytest.raises(NoteError, match=error):
        CheckpointBody.parse(text)


@pytest.mark.parametrize(
    ("note", "error"),
    [
        ("text\n", "blank line"),
        ("text\n\n", "at least one signature"),
        ("text\n\nno dash here\n", "em dash"),
        ("text\n\n\u2014 name !!!!\n", "not base64"),
        ("text\n\n\u2014 name AAAA\n", "too short"),
        ("te\x07xt\n\n\u2014 name AAAAAAAA\n", "control characters"),
        ("text\n\n\u2014 na+me AAAAAAAA\n", "key name"),
        ("text\n\n" + "\u2014 name AAAAAAAA\n" * 101, "at most 100"),
    ],
)
def test_malformed_notes_are_refused(note: str, error: str) -> None:
    with pytest.raises(NoteError, match=error):
        signature_lines(note)


@pytest.mark.parametrize(
    ("vkey", "error"),
    [
        ("example.com/foo", "not a verifier key"),
        ("example.com/foo+530d903a+!!!", "not base64"),
        ("example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "key ID"),
        ("example.com/bar+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "key ID"),
        ("example.com/foo+530d903a+AukyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "type"),
        ("a b+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "key name"),
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str, error: str) -> None:
    with pytest.raises(NoteError, match=error):
        parse_verifier_key(vkey)


def test_names_and_times_are_checked_when_signing() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(NoteError, match="key name"):
        sign_note("text\n", "has space", key)
    with pytest.raises(NoteError, match="end in a newline"):
        sign_note("text", "name", key)
    with pytest.raises(NoteError, match="POSIX"):
        cosign("text\n", "name", key, -1)

"""Keys, TLS material, enrolment and admission: real files, real keys, a real ledger."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import text
from typer.testing import CliRunner

from client.enrolment import ParticipantState, dataset_manifest, enrol
from common.consortium import EnrolmentError, read_request
from common.envelope import Envelope
from common.images import ImageData, write_npz
from common.keys import (
    PASSPHRASE_ENV,
    KeyFileError,
    encode_public,
    key_id,
    load_ec_key,
    load_ed25519_key,
    load_x25519_key,
    write_private_key,
)
from common.licences import SPDX
from common.policy import Policy
from fedcommons.cli import app
from ledger import Ledger, LedgerError, admitted_keys
from ledger.report import ledger_report
from server.deploy import OperatorFiles
from server.operator.consortium import admit, init_consortium

# -- key files ----------------------------------------------------------------


def test_a_key_round_trips_with_and_without_a_passphrase(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    plain = write_private_key(tmp_path / "plain.pem", key)
    locked = write_private_key(tmp_path / "locked.pem", key, passphrase="correct horse")
    assert oct(plain.stat().st_mode & 0o777) == oct(0o600)
    assert oct(locked.stat().st_mode & 0o777) == oct(0o600)
    assert b"ENCRYPTED PRIVATE KEY" in locked.read_bytes()
    for path, passphrase in ((plain, None), (locked, "correct horse")):
        loaded = load_ed25519_key(path, passphrase=passphrase)
        assert key_id(loaded.public_key()) == key_id(key.public_key())


def test_wrong_or_missing_passphrase_fails_clearly(tmp_path: Path) -> None:
    path = write_private_key(
        tmp_path / "k.pem", X25519PrivateKey.generate(), passphrase="right one"
    )
    with pytest.raises(KeyFileError, match=r"wrong passphrase for .*k.pem"):
        load_x25519_key(path, passphrase="wrong one")
    with pytest.raises(KeyFileError, match=f"protected by a passphrase.*{PASSPHRASE_ENV}"):
        load_x25519_key(path)


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "k.pem", Ed25519PrivateKey.generate())
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match=r"has mode 0644: .*chmod 600"):
        load_ed25519_key(path)


def test_corrupt_truncated_missing_and_wrong_type_keys_fail_clearly(tmp_path: Path) -> None:
    good = write_private_key(tmp_path / "good.pem", Ed25519PrivateKey.generate())
    text = good.read_bytes()
    cases = {
        "garbage.pem": b"\x00\x01 this is not a key",
        "truncated.pem": text[: len(text) // 2],
        "mangled.pem": text.replace(text.splitlines()[1][:8], b"AAAAAAAA"),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        with pytest.raises(KeyFileError, match=f"{name} (is not a PEM private key|is corrupt)"):
            load_ed25519_key(path)
    with pytest.raises(KeyFileError, match="no key file at"):
        load_ed25519_key(tmp_path / "absent.pem")
    with pytest.raises(KeyFileError, match="not an X25519 aggregator key"):
        load_x25519_key(good)


def test_an_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "k.pem", Ed25519PrivateKey.generate())
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="exists already"):
        write_private_key(path, Ed25519PrivateKey.generate())
    assert path.read_bytes() == before


# -- consortium, enrolment, admission ------------------------------------------


JSON = ["--format", "json"]


@pytest.fixture()
def operator(tmp_path: Path) -> OperatorFiles:
    return init_consortium(
        tmp_path / "operator",
        name="Test consortium",
        superlink="127.0.0.1:9092",
        hosts=["127.0.0.1", "localhost", "fl.example.org"],
    )


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = ImageData(
        rng.random((30, 1, 8, 8)).astype(np.float32),
        np.arange(30, dtype=np.int64) % 10,
        "x",
    )
    path = tmp_path / "lab" / "digits.npz"
    write_npz(path, data)
    return path


def _enrol(operator: OperatorFiles, data_file: Path, state: Path, **changes: str) -> Path:
    values = {
        "institution": "university-a",
        "kind": "academia",
        "licence": "CC-BY-4.0",
    }
    values.update(changes)
    return enrol(
        state,
        data_path=data_file,
        consortium_file=operator.consortium_file,
        **values,  # type: ignore[arg-type]
    )


def test_init_creates_keys_owner_only_and_a_ca_that_signs_the_superlink_cert(
    operator: OperatorFiles,
) -> None:
    for key in (operator.signing_key, operator.aggregator_key, operator.tls.private_key):
        assert key.stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate(operator.tls.ca_certificate.read_bytes())
    leaf = x509.load_pem_x509_certificate(operator.tls.certificate.read_bytes())
    leaf.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(load_ec_key(operator.tls.private_key), ec.EllipticCurvePrivateKey)
    consortium = operator.consortium()
    assert consortium.aggregator_public_key  # the public half only
    assert consortium.id == key_id(load_x25519_key(operator.aggregator_key).public_key())
    operator.policy()  # a valid policy to edit, with no operator setting in it
    assert "deploy" not in operator.policy_file.read_text()
    deploy = operator.deploy()  # the operator's own settings, in their own file
    assert deploy.aggregator_key == operator.aggregator_key
    assert deploy.operator_key == operator.signing_key
    assert deploy.ledger_url == operator.default_ledger_url
    with pytest.raises(FileExistsError, match="is a consortium already"):
        init_consortium(operator.root, name="x", superlink="h:1", hosts=["h"])


def test_enrolment_writes_keys_and_a_signed_manifest_never_the_data(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    request_path = _enrol(operator, data_file, tmp_path / "state")
    state = ParticipantState(tmp_path / "state")
    for key in (state.signing_key, state.supernode_key):
        assert key.stat().st_mode & 0o777 == 0o600
    request = read_request(request_path, operator.consortium())
    assert (request.institution, request.kind, request.licence_terms.id) == (
        "university-a",
        "academia",
        "CC-BY-4.0",
    )
    manifest = dataset_manifest(Policy(), data_file)
    assert request.dataset == manifest
    assert manifest["records"] == 30
    assert manifest["schema"] == {"kind": "images", "shape": [1, 8, 8], "num_classes": 10}
    assert request.signing_key_id == key_id(state.load_signing_key().public_key())
    assert request.supernode_public_key.startswith("ecdsa-sha2-nistp384 ")
    text = request_path.read_text()
    assert "0.6369" not in text and len(text) < 3000  # a manifest, not pixel values


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("licence", SPDX["CC0-1.0"].to_dict()),
        ("institution", "university-b"),
        ("kind", "industry"),
    ],
)
def test_a_tampered_request_is_refused(
    operator: OperatorFiles, data_file: Path, tmp_path: Path, field: str, value: object
) -> None:
    path = _enrol(operator, data_file, tmp_path / "state")
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(EnrolmentError, match="the signature does not verify"):
        read_request(path, operator.consortium())


def test_tampered_manifest_and_swapped_key_are_refused(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    path = _enrol(operator, data_file, tmp_path / "state")
    doc = json.loads(path.read_text())
    doc["dataset"]["records"] = 30000
    path.write_text(json.dumps(doc))
    with pytest.raises(EnrolmentError, match="signature does not verify"):
        read_request(path, operator.consortium())
    other = _enrol(operator, data_file, tmp_path / "other", institution="company-c")
    doc = json.loads(_enrol(operator, data_file, tmp_path / "third").read_text())
    doc["signing_public_key"] = json.loads(other.read_text())["signing_public_key"]
    path.write_text(json.dumps(doc))
    with pytest.raises(EnrolmentError, match="signature does not verify"):
        read_request(path, operator.consortium())


def test_malformed_requests_and_requests_for_another_consortium_are_refused(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    path = _enrol(operator, data_file, tmp_path / "state")
    other = init_consortium(tmp_path / "other", name="o", superlink="h:1", hosts=["h"])
    with pytest.raises(EnrolmentError, match="made for another consortium"):
        read_request(path, other.consortium())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EnrolmentError, match=re.escape("bad.json is not a JSON enrolment request")):
        read_request(bad, operator.consortium())
    doc = json.loads(path.read_text())
    del doc["signature"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(EnrolmentError, match="'signature' must be a str"):
        read_request(bad, operator.consortium())


def test_bad_enrolment_input_fails_before_any_key_is_written(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with pytest.raises(EnrolmentError, match="kind must be one of"):
        _enrol(operator, data_file, state, kind="government")
    with pytest.raises(EnrolmentError, match="institution name 'University A'"):
        _enrol(operator, data_file, state, institution="University A")
    with pytest.raises(EnrolmentError, match="declare the licence"):
        _enrol(operator, data_file, state, licence="  ")
    with pytest.raises(EnrolmentError, match="no consortium file at"):
        enrol(
            state,
            institution="u",
            kind="academia",
            data_path=data_file,
            licence="CC0-1.0",
            consortium_file=tmp_path / "nowhere.json",
        )
    assert not state.exists()
    _enrol(operator, data_file, state)
    with pytest.raises(EnrolmentError, match="already holds an enrolment"):
        _enrol(operator, data_file, state)


def test_re_enrolling_with_an_unsafe_or_locked_key_fails_clearly(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    enrol(
        state,
        institution="university-a",
        kind="academia",
        data_path=data_file,
        licence="CC-BY-4.0",
        consortium_file=operator.consortium_file,
        passphrase="s3cret",
    )
    signing = ParticipantState(state).signing_key
    again = {
        "institution": "university-a",
        "kind": "academia",
        "data_path": data_file,
        "licence": "CC-BY-4.0",
        "consortium_file": operator.consortium_file,
        "reuse_keys": True,
    }
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        enrol(state, passphrase="guess", **again)  # type: ignore[arg-type]
    enrol(state, passphrase="s3cret", **again)  # type: ignore[arg-type]
    signing.chmod(0o640)
    with pytest.raises(KeyFileError, match="has mode 0640"):
        enrol(state, passphrase="s3cret", **again)  # type: ignore[arg-type]


def test_admission_records_keys_manifest_and_licence_and_registers_the_node(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    path = _enrol(operator, data_file, tmp_path / "state")
    registered: list[str] = []
    ledger = Ledger(operator.deploy().ledger_url)
    request = admit(
        ledger,
        operator.consortium(),
        path,
        register=lambda key, _institution: registered.append(key.read_text()),
        purpose="commercial",
    )
    assert registered == [request.supernode_public_key + "\n"]
    # again: nothing changes
    admit(ledger, operator.consortium(), path, register=None, purpose="commercial")
    with ledger.session() as s:
        report = ledger_report(s)
        keys = admitted_keys(s)
    (participant,) = report["participants"]
    assert participant["signing_key_id"] == request.signing_key_id
    assert participant["supernode_public_key"] == request.supernode_public_key
    assert participant["admitted_at"] is not None
    (dataset,) = participant["datasets"]
    assert dataset["sha256"] == request.dataset["sha256"]
    assert (dataset["records"], dataset["licence"]) == (30, "CC-BY-4.0")
    assert keys == {"university-a": request.signing_public_key}

    # someone else's request under the same name, with another key: refused
    impostor = _enrol(operator, data_file, tmp_path / "impostor")
    with pytest.raises(LedgerError, match="already admitted with signing key"):
        admit(ledger, operator.consortium(), impostor, register=None, purpose="research")
    # a tampered request changes nothing in the ledger
    doc = json.loads(path.read_text())
    doc["licence"] = "proprietary"
    path.write_text(json.dumps(doc))
    with pytest.raises(EnrolmentError, match="'licence' must be a dict"):
        admit(ledger, operator.consortium(), path, register=None, purpose="research")
    with ledger.session() as s:
        assert ledger_report(s)["participants"][0]["datasets"][0]["licence"] == "CC-BY-4.0"
    ledger.close()


# -- the commands ---------------------------------------------------------------


def test_init_enroll_admit_from_the_command_line(data_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    folder = tmp_path / "consortium"
    result = runner.invoke(app, ["operator", "init", str(folder), "--superlink", "fl.lab:9092"])
    assert result.exit_code == 0, result.output
    consortium = folder / "consortium.json"
    state = tmp_path / "node"
    enroll = [
        "client", "enroll", "--state", str(state), "--institution", "company-c",
        "--kind", "industry", "--data", str(data_file), "--licence", "CC-BY-NC-4.0",
        "--consortium", str(consortium),
    ]  # fmt: skip
    result = runner.invoke(app, enroll)
    assert result.exit_code == 0, result.output
    request = state / "enrolment-request.json"
    assert request.is_file()
    result = runner.invoke(app, enroll)
    assert result.exit_code == 1 and "already holds an enrolment" in result.output

    # no SuperLink is running: admission records the request, registration fails clearly
    result = runner.invoke(app, ["operator", "admit", str(request), "--dir", str(folder)])
    assert result.exit_code == 1
    assert "flwr supernode register" in result.output
    result = runner.invoke(
        app,
        ["operator", "admit", str(request), "--dir", str(folder), "--no-register", *JSON],
    )
    assert result.exit_code == 0, result.output
    admitted = json.loads(result.output)
    assert admitted["institution"] == "company-c"
    assert admitted["licence"] == "CC-BY-NC-4.0"
    assert admitted["records"] == 30
    result = runner.invoke(
        app, ["audit", "show", "--ledger", f"sqlite:///{folder / 'ledger.db'}", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    (participant,) = json.loads(result.output)["participants"]
    assert participant["signing_key_id"] == admitted["signing_key_id"]


# -- the node's side of sealing --------------------------------------------------


def test_a_node_seals_only_to_the_pinned_aggregator_and_only_when_enrolled(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    from client.sealing import seal_update
    from common.policy import PolicyError
    from common.protocol import PrivacyCharge, TrainConfig
    from server.app.strategy.gate import UpdateGate

    state = ParticipantState(tmp_path / "state")
    _enrol(operator, data_file, state.root)
    weights = {"w": np.arange(6, dtype=np.float32)}
    charge = PrivacyCharge(True, 1.5, 1e-5, 1.0, 0.1, 3, "rdp", 1.0, "d" * 64, "h" * 64)
    pinned = operator.consortium().aggregator_public_key

    def sealed(aggregator: str | None, where: ParticipantState = state) -> Envelope:
        return seal_update(
            where,
            institution="university-a",
            weights=weights,
            charge=charge,
            num_examples=30,
            flower_run_id=5,
            model_sha256="m" * 64,
            config=TrainConfig(1, base_sha256="b" * 64, aggregator_key=aggregator),
        )

    envelope = sealed(pinned)
    gate = UpdateGate(
        flower_run_id="5",
        aggregator_key=operator.load_aggregator_key(),
        participants={"university-a": state.load_signing_key().public_key()},
        expected={"w": ((6,), "float32")},
        base_model_sha256="b" * 64,
    )
    gate.begin_round(1, "m" * 64)
    opened = gate.open(envelope)
    np.testing.assert_array_equal(opened.arrays["w"], weights["w"])
    assert opened.header.privacy == charge and opened.header.num_examples == 30

    impostor = encode_public(X25519PrivateKey.generate().public_key())
    with pytest.raises(PolicyError, match="is not the one pinned"):
        sealed(impostor)
    with pytest.raises(PolicyError, match="is not the one pinned"):
        sealed(None)
    with pytest.raises(PolicyError, match="this node is not enrolled"):
        sealed(pinned, ParticipantState(tmp_path / "elsewhere"))
    state.signing_key.chmod(0o644)
    with pytest.raises(KeyFileError, match="has mode 0644"):
        sealed(pinned)


def test_admission_refuses_a_licence_that_forbids_the_purpose_and_records_why(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    path = _enrol(operator, data_file, tmp_path / "state", licence="CC-BY-NC-4.0")
    ledger = Ledger(operator.deploy().ledger_url)
    with pytest.raises(EnrolmentError, match=re.escape(
        "not admitted: licence CC-BY-NC-4.0 allows research, education, not commercial use"
    )):  # fmt: skip
        admit(ledger, operator.consortium(), path, register=None, purpose="commercial")
    with ledger.engine.connect() as c:
        kind, payload = c.execute(
            text("SELECT kind, payload FROM ledger_entries ORDER BY seq DESC LIMIT 1")
        ).one()
    assert kind == "admission-refused"
    assert json.loads(payload)["reason"].endswith("not commercial use (commercial run)")
    with ledger.session() as s:
        assert ledger_report(s)["participants"] == []
    admit(ledger, operator.consortium(), path, register=None, purpose="research")
    with ledger.session() as s:
        (participant,) = ledger_report(s)["participants"]
    assert participant["datasets"][0]["licence_terms"]["commercial"] is False
    ledger.close()


def test_enrolment_refuses_an_unknown_or_expired_licence(
    operator: OperatorFiles, data_file: Path, tmp_path: Path
) -> None:
    from common.licences import LicenceError

    with pytest.raises(LicenceError, match=re.escape("unknown licence 'GPL-3.0'")):
        _enrol(operator, data_file, tmp_path / "a", licence="GPL-3.0")
    terms = tmp_path / "old.toml"
    terms.write_text(
        "commercial = false\nderivatives = true\nshare-alike = false\n"
        'purposes = ["research"]\nexpires = 2001-01-01\n'
    )
    with pytest.raises(LicenceError, match="expired on 2001-01-01"):
        _enrol(operator, data_file, tmp_path / "b", licence=str(terms))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

"""``operator serve`` and ``client start``: every refusal, with the input that causes it.

The certificate checks run against a real TLS server (Python's ``ssl`` with
the consortium's own certificate files); the clean stop runs the real
SuperLink.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from typer.testing import CliRunner

from client.enrolment import ParticipantState, enrol
from client.supernode import NodeStartError, check_state, check_superlink_certificate
from common.images import write_npz
from common.keys import write_supernode_key
from common.processes import ProcessTree
from common.tls import TlsFiles
from fedcommons.cli import app
from fedcommons.errors import EXIT_USER_ERROR
from fedcommons.partition import load_digits_data
from fedcommons.startup import free_port
from server.deploy import DeployConfig, OperatorFiles
from server.operator.consortium import init_consortium
from server.operator.status import NodeNames
from server.operator.superlink import ServeError, check_operator_folder

runner = CliRunner()


@pytest.fixture
def operator(tmp_path: Path) -> OperatorFiles:
    return init_consortium(
        tmp_path / "operator", name="t", superlink="127.0.0.1:9092", hosts=["127.0.0.1"]
    )


@pytest.fixture
def state(tmp_path: Path, operator: OperatorFiles) -> ParticipantState:
    data = tmp_path / "data" / "mine.npz"
    write_npz(data, load_digits_data().subset(np.arange(60)))
    enrol(
        tmp_path / "state",
        institution="lab-a",
        kind="academia",
        data_path=data,
        licence="CC-BY-4.0",
        consortium_file=operator.consortium_file,
    )
    return ParticipantState(tmp_path / "state")


def _start(state: Path, *args: str) -> str:
    """``client start`` refused: its one-line error, whitespace folded."""
    result = runner.invoke(app, ["client", "start", "--state", str(state), *args])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    return " ".join(result.output.split())


# -- client start: the state folder ------------------------------------------


def test_a_complete_state_folder_passes_and_names_its_data(state: ParticipantState) -> None:
    node = check_state(state.root)
    assert node.node_config.institution == "lab-a"
    assert node.node_config.data_dir.name == "mine.npz"
    assert node.node_config.state_dir == state.root.resolve()
    request = json.loads(state.request.read_text())
    assert node.dataset_sha256 == request["dataset"]["sha256"]


def test_start_refuses_a_missing_state_folder(tmp_path: Path) -> None:
    assert "no state folder at" in _start(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "missing",
    [
        "keys/signing.pem",
        "keys/supernode.pem",
        "keys/supernode.pub",
        "consortium.json",
        "ca.pem",
        "enrolment-request.json",
        "node.toml",
        "data-policy.toml",
    ],
)
def test_start_refuses_an_incomplete_state_folder(state: ParticipantState, missing: str) -> None:
    (state.root / missing).unlink()
    said = _start(state.root)
    assert "is incomplete" in said and f"{Path(missing).name} is missing" in said


def test_start_refuses_a_changed_pinned_ca(state: ParticipantState, tmp_path: Path) -> None:
    other = init_consortium(tmp_path / "other", name="o", superlink="h:1", hosts=["h"])
    shutil.copyfile(other.tls.ca_certificate, state.ca_certificate)
    assert "ca.pem is not the CA in" in _start(state.root)


def test_start_refuses_settings_for_another_institution(state: ParticipantState) -> None:
    text = state.node_settings.read_text().replace('"lab-a"', '"lab-b"')
    state.node_settings.write_text(text)
    assert "names 'lab-b' but the enrolment request is for 'lab-a'" in _start(state.root)


def test_start_refuses_unreadable_settings(state: ParticipantState) -> None:
    state.node_settings.write_text("institution = \n")
    assert "node.toml is not valid TOML" in _start(state.root)
    state.node_settings.write_text('institution = "lab-a"\n')
    assert 'needs institution = "..." and data = "..."' in _start(state.root)


def test_start_refuses_a_supernode_key_that_was_not_admitted(state: ParticipantState) -> None:
    other = state.root.parent / "other-state"
    enrol(
        other,
        institution="lab-a",
        kind="academia",
        data_path=state.root.parent / "data" / "mine.npz",
        licence="CC-BY-4.0",
        consortium_file=state.consortium,
    )
    for name in ("supernode.pem", "supernode.pub"):
        shutil.copyfile(other / "keys" / name, state.root / "keys" / name)
    assert "is not the SuperNode key in the admitted request" in _start(state.root)


def test_start_names_a_truncated_supernode_key(state: ParticipantState) -> None:
    """Flower would read it only after the checks, and say the SuperLink cannot be reached."""
    key = state.supernode_key
    key.write_bytes(key.read_bytes()[:200])
    said = _start(state.root, "--wait", "0.1")
    assert f"{key} is not a readable SuperNode key (truncated or corrupt" in said


def test_start_refuses_a_supernode_key_that_is_not_its_public_halfs(
    state: ParticipantState, tmp_path: Path
) -> None:
    key = state.supernode_key
    key.unlink()
    write_supernode_key(key, tmp_path / "other.pub")
    said = _start(state.root, "--wait", "0.1")
    assert f"{key} is not the private half of {state.supernode_public_key}" in said


def test_start_refuses_data_that_no_longer_match_the_manifest(state: ParticipantState) -> None:
    data = state.root.parent / "data" / "mine.npz"
    write_npz(data, load_digits_data().subset(np.arange(61)))  # one more record
    said = _start(state.root)
    assert f"the data at {data} no longer match the manifest the operator admitted" in said


def test_start_refuses_data_that_cannot_be_read(state: ParticipantState) -> None:
    data = state.root.parent / "data" / "mine.npz"
    np.savez(data, images=np.zeros((4, 8, 8)), labels=np.array([0, 1, 2, 42]))
    said = _start(state.root)
    assert "cannot be read" in said and "label 42 at index 3 is out of range" in said


def test_start_refuses_an_encrypted_key_without_its_passphrase(
    tmp_path: Path, operator: OperatorFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "d.npz"
    write_npz(data, load_digits_data().subset(np.arange(60)))
    folder = tmp_path / "locked"
    enrol(
        folder,
        institution="lab-l",
        kind="industry",
        data_path=data,
        licence="CC-BY-4.0",
        consortium_file=operator.consortium_file,
        passphrase="correct horse",
    )
    monkeypatch.delenv("FEDCOMMONS_KEY_PASSPHRASE", raising=False)
    assert "every update is signed with it" in _start(folder)


# -- client start: the SuperLink's certificate ------------------------------


@contextlib.contextmanager
def _tls_server(tls: TlsFiles) -> Iterator[int]:
    """A TLS server on 127.0.0.1 presenting ``tls``'s certificate; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.certificate, tls.private_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_the_consortium_superlink_certificate_is_accepted(
    operator: OperatorFiles, state: ParticipantState
) -> None:
    with _tls_server(operator.tls) as port:
        check_superlink_certificate(f"127.0.0.1:{port}", state.ca_certificate, wait=0)


def test_start_refuses_a_superlink_certified_by_another_ca(
    state: ParticipantState, tmp_path: Path
) -> None:
    impostor = init_consortium(
        tmp_path / "impostor", name="i", superlink="127.0.0.1:1", hosts=["127.0.0.1"]
    )
    with _tls_server(impostor.tls) as port:
        said = _start(state.root, "--superlink", f"127.0.0.1:{port}", "--wait", "0")
    assert "presented a certificate that the pinned consortium CA" in said
    assert "this may not be your consortium's SuperLink" in said


def test_start_refuses_a_certificate_for_another_host(
    operator: OperatorFiles, state: ParticipantState
) -> None:
    with (
        _tls_server(operator.tls) as port,  # certified for 127.0.0.1, reached as localhost
        pytest.raises(NodeStartError, match="did not issue for localhost"),
    ):
        check_superlink_certificate(f"localhost:{port}", state.ca_certificate, wait=0)


def test_start_refuses_an_unreachable_superlink_after_waiting(state: ParticipantState) -> None:
    port = free_port()
    started = time.monotonic()
    said = _start(state.root, "--superlink", f"127.0.0.1:{port}", "--wait", "1.5")
    assert time.monotonic() - started >= 1.5
    assert f"cannot reach the SuperLink at 127.0.0.1:{port}" in said


@pytest.mark.parametrize("address", ["no-port", "host:", ":9092", "host:http"])
def test_a_malformed_superlink_address_is_refused(state: ParticipantState, address: str) -> None:
    with pytest.raises(NodeStartError, match="is not host:port"):
        check_superlink_certificate(address, state.ca_certificate, wait=0)


# -- operator serve ----------------------------------------------------------


def _serve(folder: Path, *args: str) -> str:
    result = runner.invoke(app, ["operator", "serve", str(folder), *args])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    return " ".join(result.output.split())


def test_a_fresh_consortium_folder_passes_the_checks(operator: OperatorFiles) -> None:
    check_operator_folder(operator)


def test_serve_refuses_a_folder_that_is_not_a_consortium(tmp_path: Path) -> None:
    assert "is not a consortium folder" in _serve(tmp_path)


def test_serve_refuses_a_certificate_from_another_ca(
    operator: OperatorFiles, tmp_path: Path
) -> None:
    other = init_consortium(tmp_path / "other", name="o", superlink="h:1", hosts=["h"])
    shutil.copyfile(other.tls.certificate, operator.tls.certificate)
    assert "was not issued by the consortium CA" in _serve(operator.root)


def test_serve_refuses_a_key_that_is_not_the_certificates(
    operator: OperatorFiles, tmp_path: Path
) -> None:
    other = init_consortium(tmp_path / "other", name="o", superlink="h:1", hosts=["h"])
    shutil.copyfile(other.tls.private_key, operator.tls.private_key)
    assert "superlink-key.pem is not the key of" in _serve(operator.root)


def test_serve_refuses_a_missing_tls_file(operator: OperatorFiles) -> None:
    operator.tls.certificate.unlink()
    assert "TLS files are not usable: no TLS certificate at" in _serve(operator.root)


def test_serve_refuses_encrypted_keys_without_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = init_consortium(
        tmp_path / "locked", name="l", superlink="127.0.0.1:1", hosts=["127.0.0.1"],
        passphrase="correct horse",
    )  # fmt: skip
    monkeypatch.delenv("FEDCOMMONS_KEY_PASSPHRASE", raising=False)
    with pytest.raises(ServeError, match="the ServerApp needs it at every run"):
        check_operator_folder(locked)


def test_serve_refuses_a_ledger_it_cannot_open(operator: OperatorFiles, tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'gone' / 'ledger.db'}"
    deploy = DeployConfig.defaults(operator).with_values(
        {"ledger-url": missing}, operator.root, "t"
    )
    operator.deploy_file.write_text(deploy.to_toml(operator.root))
    said = _serve(operator.root)
    assert "the ledger in" in said and "does not exist" in said


def test_serve_refuses_a_port_in_use(operator: OperatorFiles) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        said = _serve(operator.root, "--host", "127.0.0.1", "--port", str(port))
    assert f"cannot listen on 127.0.0.1:{port}: in use" in said


def test_serve_stops_cleanly_on_sigterm_with_nothing_left(operator: OperatorFiles) -> None:
    """The real SuperLink, in the foreground: SIGTERM stops it and its SuperExec, exit 0."""
    port = free_port()
    command = [sys.executable, "-m", "fedcommons.cli", "operator", "serve", str(operator.root)]
    serve = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    tree = ProcessTree()
    tree.add_root(serve.pid)
    try:
        deadline = time.monotonic() + 60
        while not tree.running(b"flower-superexec"):
            assert serve.poll() is None, serve.stdout.read() if serve.stdout else b""
            assert time.monotonic() < deadline, "the SuperLink did not start its SuperExec"
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=30)
    finally:
        tree.stop()
    text = output.decode(errors="replace")
    assert serve.returncode == 0, text
    assert f"SuperLink on 127.0.0.1:{port} (TLS, registered SuperNodes only)" in " ".join(
        text.split()
    )
    assert (operator.root / "superlink.db").is_file()  # its state stays for the next start
    assert tree.look() == set()


def test_node_names_are_noted_per_node_id(operator: OperatorFiles) -> None:
    names = NodeNames.of(operator)
    assert names.read() == {}
    names.note(7, "lab-a")
    names.note(9, "lab-b")
    names.note(7, "lab-a")
    assert names.read() == {"7": "lab-a", "9": "lab-b"}
    assert os.stat(names.path).st_size > 0


def test_serve_refuses_a_certificate_that_does_not_cover_its_local_address(
    tmp_path: Path,
) -> None:
    remote_only = init_consortium(
        tmp_path / "remote", name="r", superlink="10.9.9.9:9092", hosts=["10.9.9.9"]
    )
    said = _serve(remote_only.root)
    assert "does not cover 127.0.0.1 (it names 10.9.9.9)" in said
    assert "SuperExec connects there" in said


def test_init_always_certifies_the_superlinks_local_address(tmp_path: Path) -> None:
    folder = tmp_path / "op"
    result = runner.invoke(
        app, ["operator", "init", str(folder), "--superlink", "10.9.9.9:9092", "--host", "10.9.9.9"]
    )
    assert result.exit_code == 0, result.output
    check_operator_folder(OperatorFiles(folder))
    certificate = x509.load_pem_x509_certificate(OperatorFiles(folder).tls.certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "10.9.9.9",
        "127.0.0.1",
    }
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # every check passes but the last: 10.9.9.9 is not an address of this machine
    assert "cannot listen on 10.9.9.9:9092" in _serve(folder, "--host", "10.9.9.9")

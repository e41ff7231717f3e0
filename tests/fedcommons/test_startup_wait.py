"""The start-up wait on real processes and sockets: patient with a process that works,
quick with one that is stuck or gone, and ``demo --startup-timeout`` checked and passed on.

Each process here is one this test started, stopped by its own PID.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fedcommons.demo_cli
from fedcommons.cli import app
from fedcommons.local_federation import LocalFederation, NodeSpec
from fedcommons.startup import STARTUP_TIMEOUT, free_port, wait_for_port
from server.operator.flower import FederationError

BUSY = "while True: pass"  # works (uses CPU) and never listens
IDLE = "import time; time.sleep(120)"  # neither works nor listens


@contextmanager
def _python(code: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@contextmanager
def _listening_after(delay: float, port: int) -> Iterator[None]:
    """A real socket that starts listening on ``port`` after ``delay`` seconds."""
    opened = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        def listen() -> None:
            time.sleep(delay)
            sock.bind(("127.0.0.1", port))
            sock.listen()
            opened.set()

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join()
            assert opened.is_set()


def test_a_working_process_is_waited_for_past_the_stall_window() -> None:
    port = free_port()
    # timeout 5 s: an idle process would count as stuck after 1 s; this one works
    with _python(BUSY) as process, _listening_after(2.5, port):
        started = time.monotonic()
        wait_for_port(port, process, "SuperNode lab-a", timeout=5.0)
        waited = time.monotonic() - started
    assert 2.4 <= waited < 5.0


def test_an_idle_process_that_never_listens_is_stuck_after_a_fifth_of_the_timeout(
    tmp_path: Path,
) -> None:
    log = tmp_path / "supernode-lab-a.log"
    with _python(IDLE) as process:
        started = time.monotonic()
        with pytest.raises(FederationError) as stuck:
            wait_for_port(free_port(), process, "SuperNode lab-a", timeout=10.0, log_file=log)
        waited = time.monotonic() - started
    assert 2.0 <= waited < 10.0  # 20% of 10 s after its last CPU tick, before the timeout
    message = str(stuck.value)
    assert message.startswith("SuperNode lab-a did not listen on 127.0.0.1:")
    assert f"used no CPU for 2 s: it looks stuck; see {log}." in message
    assert "a longer --startup-timeout (now 10 s, 20% of which without CPU" in message


def test_a_working_process_that_never_listens_fails_at_the_timeout_naming_the_option() -> None:
    port = free_port()
    with _python(BUSY) as process:
        started = time.monotonic()
        with pytest.raises(FederationError) as late:
            wait_for_port(port, process, "SuperLink", timeout=2.0)
        waited = time.monotonic() - started
    assert 2.0 <= waited < 5.0
    assert str(late.value) == (
        f"SuperLink did not listen on 127.0.0.1:{port} within 2 s, although it kept working "
        "(a busy machine?). Give it longer with --startup-timeout SECONDS"
    )


def test_a_process_that_exits_while_starting_is_reported_at_once(tmp_path: Path) -> None:
    log = tmp_path / "superlink.log"
    with _python("raise SystemExit(3)") as process:
        started = time.monotonic()
        with pytest.raises(FederationError) as gone:
            wait_for_port(free_port(), process, "SuperLink", timeout=60.0, log_file=log)
        assert time.monotonic() - started < 10.0
    assert str(gone.value) == f"SuperLink exited with code 3 while starting; see {log}"


def test_a_federation_refuses_a_startup_timeout_of_zero(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="startup_timeout must be more than 0 seconds, got 0"):
        LocalFederation(tmp_path, [NodeSpec("lab-a", tmp_path)], startup_timeout=0)


@pytest.mark.parametrize("given", ["0", "-5"])
def test_demo_refuses_a_startup_timeout_that_is_not_positive(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["demo", "--startup-timeout", given, "--workdir", str(tmp_path / "w")]
    )
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"--startup-timeout is seconds, more than 0, not {given}" in said
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_demo_passes_its_startup_timeout_to_the_federation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[float] = []

    def run_demo(workdir: Path, policy: Any, **options: Any) -> dict[str, Any]:
        given.append(options["startup_timeout"])
        raise FederationError("stopped here by the test")

    monkeypatch.setattr(fedcommons.demo_cli, "run_demo", run_demo)
    monkeypatch.setattr(fedcommons.demo_cli, "interrupt_on_sigterm", lambda: None)
    for args, expected in (([], STARTUP_TIMEOUT), (["--startup-timeout", "900"], 900.0)):
        result = CliRunner().invoke(app, ["demo", *args, "--workdir", str(tmp_path / "w")])
        assert result.exit_code == 1 and "stopped here by the test" in result.output
        assert given.pop() == expected

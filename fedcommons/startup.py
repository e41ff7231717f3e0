"""Starting a Flower process: a free port, and an adaptive wait until it listens.

:func:`wait_for_port` waits while the process (with everything it started)
keeps working, fails at once when it exits, and calls it stuck when it uses
no CPU for a share of the timeout: a busy machine gets its time, a hung
process does not hold the demo for long.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from common.processes import ProcessTree
from server.operator.flower import FederationError

__all__ = ["STALL_SHARE", "STARTUP_TIMEOUT", "free_port", "wait_for_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


STARTUP_TIMEOUT = 300.0
"""Seconds a Flower process may take at most to start listening (``demo --startup-timeout``).

The wait adapts within it: a process that exits fails at once, and one that
uses no CPU for a fifth of it (:data:`STALL_SHARE`) counts as stuck; one that
keeps working is waited for, however busy the machine, up to this.
"""

STALL_SHARE = 0.2
"""The share of the start-up timeout a starting process may spend without using any CPU."""


def wait_for_port(
    port: int,
    process: subprocess.Popen[bytes],
    name: str,
    *,
    timeout: float = STARTUP_TIMEOUT,
    log_file: Path | None = None,
) -> None:
    """Wait until something listens on 127.0.0.1:``port`` while ``process`` starts.

    Parameters
    ----------
    port : int
        The port the process opens once it has started.
    process : Popen
        The process starting; its descendants count as its work.
    name : str
        What it is, for the error ("SuperNode university-a").
    timeout : float (default: :data:`STARTUP_TIMEOUT`)
        Seconds to wait at most. A process (with everything it started) that
        uses no CPU for ``STALL_SHARE * timeout`` seconds is stuck sooner.
    log_file : Path, optional
        The process's log, named in the error.

    Raises
    ------
    FederationError
        If the process exits, is stuck or does not listen in time; each says
        which, and names ``--startup-timeout`` where more time could help.
    """
    see = f"; see {log_file}" if log_file is not None else ""
    stall = STALL_SHARE * timeout
    tree = ProcessTree()
    tree.add_root(process.pid)
    started = working = time.monotonic()
    ticks: dict[int, int] = {}
    next_look = started
    while not _listens(port):
        now = time.monotonic()
        if process.poll() is not None:
            raise FederationError(
                f"{name} exited with code {process.returncode} while starting{see}"
            )
        if now >= next_look:
            latest = tree.cpu_ticks(process.pid)
            if any(used > ticks.get(pid, -1) for pid, used in latest.items()):
                working = now
            ticks, next_look = latest, now + min(1.0, stall / 4)
        if now - working >= stall:
            raise FederationError(
                f"{name} did not listen on 127.0.0.1:{port} and used no CPU for {stall:.0f} s: "
                f"it looks stuck{see}. If the machine is only very busy, a longer "
                f"--startup-timeout (now {timeout:.0f} s, {STALL_SHARE:.0%} of which without "
                "CPU counts as stuck) gives it more time"
            )
        if now - started >= timeout:
            raise FederationError(
                f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s, although "
                f"it kept working (a busy machine?){see}. Give it longer with "
                "--startup-timeout SECONDS"
            )
        time.sleep(0.1)


def _listens(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0

"""Every process a federation started, children and grandchildren, stopped by PID.

Flower's SuperLink starts its SuperExec in a new session, and the SuperExec
starts the ServerApp: stopping the SuperLink's process group leaves them
running, orphaned, once the SuperLink is gone. :class:`ProcessTree` notes
every descendant of the processes it was given (from ``/proc``, each with
its start time, so a reused PID is never mistaken for one of ours) whenever
it is asked to look, and :meth:`ProcessTree.stop` signals each one it noted
that is still the same process, and its process group, however it was
detached.

:func:`run_foreground` is how a role command (``operator serve``, ``client
start``) runs its Flower process: in the foreground, with a stop signal
passed on exactly once and nothing left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType

__all__ = ["GRACEFUL_EXITS", "ProcessTree", "flower_env", "run_foreground"]

_PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int, int] | None:
    """``(parent pid, process group, start time)`` of ``pid``, or ``None`` if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
    if state == "Z":  # a zombie has finished; only its parent's wait is left
        return None
    return ppid, pgrp, int(fields[19])


class ProcessTree:
    """The processes started under some roots, noted as they appear."""

    def __init__(self) -> None:
        self._roots: set[int] = set()
        self._known: dict[int, int] = {}  # pid -> start time

    def add_root(self, pid: int) -> None:
        """Watch ``pid`` (a process this program started) and what it starts."""
        self._roots.add(pid)
        self.look()

    def look(self) -> set[int]:
        """Note every live descendant of the roots; return the live processes known."""
        parents: dict[int, list[int]] = {}
        if _PROC.is_dir():
            for entry in _PROC.iterdir():
                if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                    parents.setdefault(stat[0], []).append(int(entry.name))
        frontier = [pid for pid in self._roots | set(self._known) if self._alive(pid)]
        while frontier:
            pid = frontier.pop()
            stat = _stat(pid)
            if stat is None:
                continue
            self._known.setdefault(pid, stat[2])
            frontier += [child for child in parents.get(pid, []) if child not in self._known]
        return {pid for pid in self._known if self._alive(pid)}

    def _alive(self, pid: int) -> bool:
        stat = _stat(pid)
        return stat is not None and self._known.get(pid, stat[2]) == stat[2]

    @staticmethod
    def argv(pid: int) -> list[bytes]:
        """The command line ``pid`` runs (empty once it is gone or has exited)."""
        try:
            text = (_PROC / str(pid) / "cmdline").read_bytes()
        except OSError:
            return []
        return text.split(b"\0") if text else []  # a zombie's is empty

    def running(self, program: bytes, among: Iterable[int] | None = None) -> list[int]:
        """The live processes noted (or those in ``among``) whose command line names ``program``."""
        pids = self.look() if among is None else among
        return [pid for pid in pids if any(program in arg for arg in self.argv(pid)[:2])]

    def descendants(self, pid: int) -> set[int]:
        """The live processes noted as started, directly or not, by ``pid`` (and ``pid``)."""
        parents: dict[int, int] = {}
        for known in self.look():
            stat = _stat(known)
            if stat is not None:
                parents[known] = stat[0]
        found = {pid} if pid in self._known else set()
        changed = True
        while changed:
            changed = False
            for child, parent in parents.items():
                if parent in found and child not in found:
                    found.add(child)
                    changed = True
        return found

    def cpu_ticks(self, pid: int) -> dict[int, int]:
        """Clock ticks of CPU (user and system) used so far by ``pid`` and each live
        descendant noted, by PID: what a process still starting is busy with."""
        ticks: dict[int, int] = {}
        for known in self.descendants(pid):
            try:
                text = (_PROC / str(known) / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            ticks[known] = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every live process noted (and its group), then SIGKILL what is left."""
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.look() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        for pid in self.look():
            stat = _stat(pid)
            if stat is None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if stat[1] == pid:  # a group leader (a detached session): its whole group
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)


def flower_env(base: Mapping[str, str] | None = None, **defaults: str) -> dict[str, str]:
    """``base`` (default: this process's environment) with the Flower and FedCommons
    commands installed beside this Python first on ``PATH``, and each of
    ``defaults`` set unless already there (``FLWR_TELEMETRY_ENABLED="0"``)."""
    env = dict(os.environ if base is None else base)
    here = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (here, env.get("PATH", "")) if p)
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


GRACEFUL_EXITS = frozenset({0, 1, 2, 3, -signal.SIGINT, -signal.SIGTERM})
"""Exit statuses of a Flower process that stopped because it was asked to.

Flower exits 1, 2 or 3 after a graceful stop on SIGINT, SIGQUIT or SIGTERM.
"""


def run_foreground(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    grace: float = 10.0,
    companion: Sequence[str] | None = None,
) -> int:
    """Run ``argv`` until it exits or this process is asked to stop; return its exit status.

    The child runs in its own process group, so a terminal's Ctrl-C or a
    service manager's SIGTERM reaches it once, from here: Flower stops
    gracefully on the first SIGINT or SIGTERM and dies on the second. Its
    output goes where this process's goes. When it has exited (or ``grace``
    seconds after the signal), every process it started, however detached,
    is stopped too.

    ``companion`` is a second command started beside it (a warm ClientApp
    runner beside a SuperNode): stopped with it, and if it dies first, the
    main process is stopped too and its exit status is returned instead.

    Returns
    -------
    int
        0 if it stopped because this process was signalled, else its own
        exit status (negative: the signal that killed it), or the
        companion's if that ended first.
    """
    tree = ProcessTree()
    asked: list[float] = []  # when the stop signal came
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not asked:
            for child in started:
                if child.poll() is None:
                    child.send_signal(signum)
        asked.append(time.monotonic())

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for command in (argv, companion) if companion else (argv,):
            started.append(subprocess.Popen(list(command), env=dict(env), cwd=cwd, process_group=0))
            tree.add_root(started[-1].pid)
    except BaseException:
        for child in started:
            child.kill()
            child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    process = started[0]
    if asked:  # the signal came while it started
        for child in started:
            child.send_signal(signal.SIGTERM)
    companion_code: int | None = None
    try:
        while True:
            try:
                code = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                tree.look()
                if asked and time.monotonic() - asked[0] > grace:
                    process.kill()
                if len(started) > 1 and companion_code is None and not asked:
                    companion_code = started[1].poll()
                    if companion_code is not None:
                        process.send_signal(signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        tree.stop(min(grace, 5.0))
    if companion_code is not None:
        return companion_code or 1
    return 0 if asked and code in GRACEFUL_EXITS else code

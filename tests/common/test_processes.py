"""ProcessTree on real processes: a detached grandchild is found, named and stopped by PID.

Flower's SuperLink starts its SuperExec in a new session, which starts the
ServerApp; stopping the SuperLink's group leaves them running. The tree
here does the same with ``sleep``: a child starts a grandchild in a new
session and keeps running, and the grandchild must still be stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time

from common.processes import ProcessTree
from tests.support.processes import alive

# the child starts a detached grandchild (its own session), prints its PID, then waits
CHILD = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def test_a_detached_grandchild_is_noted_named_and_stopped() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, start_new_session=True
    )
    tree = ProcessTree()
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        tree.add_root(child.pid)
        assert tree.look() == {child.pid, grandchild}
        assert tree.descendants(child.pid) == {child.pid, grandchild}
        assert tree.running(b"sleep") == [grandchild]
        assert tree.running(b"sleep", [child.pid]) == []  # only among those given
        assert tree.argv(grandchild) == [b"sleep", b"300", b""]
        tree.stop(grace=5.0)
        child.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(grandchild)  # stopped by PID although it left the child's group
        assert tree.look() == set() and tree.argv(grandchild) == []
    finally:
        if child.poll() is None:
            tree.stop(grace=0.0)
            child.wait(timeout=10)

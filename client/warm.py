"""Warm ClientApps: one long-lived process per node starts every ClientApp already warm.

With ``flower-supernode --isolation subprocess`` each ClientApp is a fresh
``flwr-clientapp`` process that imports torch, Opacus (and for BERT
transformers) and loads the base model again: seconds per round. Here the
SuperNode runs with ``--isolation process`` and this runner takes Flower's
SuperExec's place beside it: it imports all that once, loads the base model
once, then asks the SuperNode's Runtime API for tasks and *forks* one child
per task. The child runs Flower's own ``flwr-clientapp`` entry point
(:func:`run_clientapp`) with the task's token and exits, so every ClientApp
is still its own process, as Flower isolates it; it only starts warm.

Flower documents ``--isolation process`` but not the SuperExec loop's
building blocks, so every Flower internal this uses is imported here and
only here, and ``tests/client/test_warm.py`` checks their signatures: a Flower
upgrade that moves them fails that test loudly, not a demo silently.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

# Flower internals (pinned by tests/client/test_warm.py)
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry.http_retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import run_clientapp

__all__ = ["POLL_SECONDS", "WarmRunner", "fresh_randomness", "main", "preload", "runner_argv"]

log = logging.getLogger("fedcommons.warm")

POLL_SECONDS = 0.1
"""How often an idle runner asks for a task (Flower's SuperExec: 1 s)."""


def runner_argv(runtime_api_address: str, state_dir: Path | None) -> list[str]:
    """The command line that starts a warm runner for the SuperNode at ``runtime_api_address``."""
    state = ["--state", str(state_dir)] if state_dir is not None else []
    return [sys.executable, "-m", "client.warm", "--runtime-api-address", runtime_api_address,
            *state]  # fmt: skip


def preload(state_dir: Path | None) -> str:
    """Import what every ClientApp needs and load this node's base model; say what was loaded.

    The model comes from the policy this node was enrolled with (its
    ``data-policy.toml``); without one only the imports are done.
    """
    import torch  # noqa: F401  (the point is the import)

    import client.client_app  # noqa: F401
    from common.policy import Policy, PolicyError

    if state_dir is None:
        return "torch, opacus and the ClientApp"
    from client.enrolment import ParticipantState

    try:
        policy = Policy.load(ParticipantState(state_dir).data_policy)
    except (OSError, PolicyError) as err:
        return f"torch, opacus and the ClientApp (no model: {err})"
    if policy.model.name != "bert":
        return "torch, opacus and the ClientApp"
    from common.bert import keep_pretrained

    source = keep_pretrained(policy.model)
    return f"torch, opacus, transformers, the ClientApp and the base model {source}"


class WarmRunner:
    """Ask the SuperNode's Runtime API for ClientApp tasks; fork a warm child for each."""

    def __init__(self, runtime_api_address: str, *, poll: float = POLL_SECONDS) -> None:
        self.address = runtime_api_address
        self.poll = poll
        self.children: dict[int, int] = {}  # pid -> task id
        self.stopping = False
        self.client = RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address,
            insecure=True,  # the Runtime API listens on this host's loopback only
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def run(self) -> None:
        """Serve tasks until SIGTERM/SIGINT, or until the process that started it is gone."""
        parent = os.getppid()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        try:
            while not self.stopping and os.getppid() == parent:
                self.reap()
                if not self.acquire_one():
                    time.sleep(self.poll)
        finally:
            self.client.close()
            self._wait_for_children()

    def acquire_one(self) -> bool:
        """Take one pending ClientApp task, if any, and start it in a forked child."""
        response = self.client.AcquireTask(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        )
        if not (response.HasField("task") and response.token):
            return False
        if response.task.type != TaskType.CLIENT_APP.value:
            log.error("ignoring task %d of type %r", response.task.task_id, response.task.type)
            return True
        pid = os.fork()
        if pid == 0:  # the child: one ClientApp, then exit without running our cleanup
            os._exit(_child(self.address, response.token))
        self.children[pid] = response.task.task_id
        return True

    def reap(self) -> None:
        for pid in list(self.children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                task = self.children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                if code:
                    log.warning("ClientApp for task %d exited with %d", task, code)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _wait_for_children(self, grace: float = 10.0) -> None:
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in list(self.children):
            os.waitpid(pid, 0)
            self.children.pop(pid)


def fresh_randomness() -> None:
    """Reseed torch's and NumPy's global generators from the OS, as a new process would be.

    A forked child inherits its parent's generator state: without this every
    ClientApp of a node would draw the same DP noise and the same Poisson
    batches, round after round, and noise repeated across rounds cancels out
    of the difference of two updates. (Python's ``random`` reseeds itself on fork.)
    """
    import numpy as np
    import torch

    torch.seed()
    np.random.seed(int.from_bytes(os.urandom(4), "little"))


def _child(address: str, token: str) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    fresh_randomness()
    try:
        run_clientapp(
            runtime_api_address=address,
            token=token,
            insecure=True,
            certificates=None,
            parent_pid=None,
            runtime_dependency_install=False,
        )
    except SystemExit as done:  # flwr-clientapp ends with flwr_exit (sys.exit)
        return done.code if isinstance(done.code, int) else 1
    except BaseException:  # the child must never return into the runner's loop
        log.exception("the ClientApp failed to start")
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m client.warm", description=__doc__)
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--state", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per poll
    started = time.perf_counter()
    loaded = preload(args.state)
    log.info("warm ClientApp runner: %s loaded in %.1f s; serving %s",
             loaded, time.perf_counter() - started, args.runtime_api_address)  # fmt: skip
    WarmRunner(args.runtime_api_address).run()


if __name__ == "__main__":
    main()

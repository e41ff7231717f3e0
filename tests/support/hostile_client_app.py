"""A hostile ClientApp, for end-to-end attack tests only: the shipped one, one member attacking.

Its handlers are the shipped ClientApp's (:mod:`client.client_app`): ``query``
and ``evaluate`` as they are, ``train`` through
:func:`client.client_app.train_sending`. Only what is sealed differs, and only
on one node: the institution named in :data:`ATTACKER_ENV` trains honestly,
then replaces its update with what the attack named in :data:`ATTACK_ENV` (a
key of :data:`tests.support.attacks.ATTACKS`) makes of it, and seals and signs
that with its own, registered key. It is authentic in every way the server
can check; only its content is hostile. Every other node runs the same app
and sends its honest update.

Flower runs one ClientApp for a run on every SuperNode, so the run carries
this app and the two variables, set in the SuperNodes' environment (which
their ClientApps inherit), pick the attacker. An attack that draws random
numbers gets a generator seeded with the policy's ``federation.seed``, as
:class:`~tests.support.hostile_federation.HostileFederation` seeds its own, so
the two agree on round 1.

Never part of the shipped app: ``pyproject.toml``'s components and
:func:`server.operator.flower.build_app_dir` name ``client.client_app:app``.
:func:`build_hostile_app_dir` packs a Flower App whose ``clientapp`` is this
module's :data:`app`, with the product's rooms and, of ``tests/``, only this
module and :mod:`tests.support.attacks`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

import common
from client.client_app import evaluate, honest_update, query, train_sending
from client.task import ClientSetup, RoundOutcome
from common.arrays import Arrays
from common.policy import Policy
from tests.support.attacks import ATTACKS

__all__ = [
    "ATTACKER_ENV",
    "ATTACK_ENV",
    "COMPONENT",
    "app",
    "attacked_update",
    "build_hostile_app_dir",
    "hostile_env",
]

ATTACKER_ENV = "FEDCOMMONS_TEST_ATTACKER"
"""The institution that attacks (unset: every node is honest)."""

ATTACK_ENV = "FEDCOMMONS_TEST_ATTACK"
"""Its attack: a key of :data:`tests.support.attacks.ATTACKS`."""

COMPONENT = "tests.support.hostile_client_app:app"
"""The ``clientapp`` component of the app :func:`build_hostile_app_dir` packs."""


def hostile_env(attacker: str, attack: str) -> dict[str, str]:
    """The environment that makes ``attacker``'s node send what ``attack`` makes of its update."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}: one of {', '.join(ATTACKS)}")
    return {ATTACKER_ENV: attacker, ATTACK_ENV: attack}


def attacked_update(
    setup: ClientSetup,
    global_weights: Arrays,
    outcome: RoundOutcome,
    env: Mapping[str, str] | None = None,
) -> tuple[Arrays, int]:
    """The honest update, or on the attacker's node what its attack makes of it.

    An :data:`~client.client_app.Outgoing`; ``env`` defaults to this process's
    environment. A bad attack name is a ``ValueError``: the node refuses the
    round with it as the reason (``bad-input`` in the ledger).
    """
    env = os.environ if env is None else env
    weights, claimed = honest_update(setup, global_weights, outcome)
    if setup.institution != env.get(ATTACKER_ENV):
        return weights, claimed
    attack = env.get(ATTACK_ENV, "")
    if attack not in ATTACKS:
        raise ValueError(f"{ATTACK_ENV}={attack!r} names no attack: one of {', '.join(ATTACKS)}")
    rng = np.random.default_rng(setup.policy.federation.seed)
    return ATTACKS[attack](global_weights, weights, claimed, rng)


app = ClientApp()
app.query()(query)
app.evaluate()(evaluate)


@app.train()
def train(message: Message, context: Context) -> Message:
    """The shipped train handler, sealing :func:`attacked_update`."""
    return train_sending(message, context, attacked_update)


def build_hostile_app_dir(target: Path) -> Path:
    """Lay out in ``target`` the FedCommons Flower App with this module as its ClientApp.

    The ServerApp, the product's rooms and the default run config are those
    of :func:`~server.operator.flower.build_app_dir`; ``tests/`` brings only
    the two modules this app needs (staged in ``target`` + ``-tests``).
    """
    # the operator's side, imported only where the app is packed, never in a ClientApp
    from server.operator.flower import PACKAGES, assemble_app

    support = Path(__file__).resolve().parent
    staged = target.with_name(f"{target.name}-tests") / "tests"
    if staged.parent.exists():
        shutil.rmtree(staged.parent)
    (staged / "support").mkdir(parents=True)
    shutil.copyfile(support.parent / "__init__.py", staged / "__init__.py")
    for module in ("__init__.py", "attacks.py", Path(__file__).name):
        shutil.copyfile(support / module, staged / "support" / module)
    root = Path(common.__file__).resolve().parent.parent  # as build_app_dir finds the rooms
    return assemble_app(
        target,
        name="fedcommons",
        sources={**{package: root / package for package in PACKAGES}, "tests": staged},
        serverapp="server.app.server_app:app",
        clientapp=COMPONENT,
        config=Policy().to_run_config(),
    )

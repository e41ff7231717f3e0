"""The ``fedcommons`` command and the embedded demo: the one package that uses every room.

Nothing below imports it: ``common`` (shared contracts), ``client``
(participants), ``server`` (the operator) and ``audit`` (auditors) each stand
on their own; this package wires them into one console command
(:mod:`fedcommons.cli`), a demo that runs a whole consortium on one
machine (:mod:`fedcommons.demo`), ``fedcommons simulate`` on Flower's
Simulation Engine (:mod:`fedcommons.simulation`, :mod:`fedcommons.simulate_cli`)
and what follows a run of either (:mod:`fedcommons.summary`).
"""

__all__ = [
    "cli",
    "demo",
    "demo_cli",
    "demo_setup",
    "errors",
    "local_federation",
    "partition",
    "simulate_cli",
    "simulation",
    "startup",
    "summary",
]

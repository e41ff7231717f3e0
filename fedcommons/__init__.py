"""The ``fedcommons`` command and the embedded demo: the one package that uses every room.

Nothing below imports it: ``common`` (shared contracts), ``client``
(participants), ``server`` (the operator) and ``audit`` (auditors) each stand
on their own; this package wires them into one console command
(:mod:`fedcommons.cli`) and a demo that runs a whole consortium on one
machine (:mod:`fedcommons.demo`).
"""

__all__ = ["cli", "demo", "demo_cli", "demo_setup", "errors", "local_federation", "partition"]

"""What the operator runs, by audience.

- :mod:`server.app`: the ServerApp process (wiring, the strategy's parts,
  valuation, snapshots, resume), which Flower starts for each run;
- :mod:`server.operator`: what the operator's commands run
  (``fedcommons operator ...`` is :mod:`server.operator.cli`);
- :mod:`server.release`: releases, model cards and their checks;
- :mod:`server.deploy`: the operator folder and its settings, read by both.

Stands on :mod:`common` and :mod:`ledger`.
"""

__all__ = ["app", "deploy", "operator", "release"]

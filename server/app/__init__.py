"""The ServerApp process: wiring (:mod:`.server_app`), the strategy's parts, valuation,
reply polling (:mod:`.grid`), snapshots and kept replies, and taking a run over
(:mod:`.run_start`, :mod:`.resume`), and the reference update trust weighting
trains on the trusted set (:mod:`.reference`)."""

__all__ = [
    "grid",
    "reference",
    "resume",
    "run_start",
    "server_app",
    "snapshots",
    "strategy",
    "valuation",
]

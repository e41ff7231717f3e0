"""The ledger: who took part, with what, and what each round produced."""

from server.ledger.store import (
    Ledger,
    LedgerError,
    UpdateFact,
    enrol_participant,
    finish_run,
    ledger_report,
    normalise_url,
    record_round,
    start_run,
)

__all__ = [
    "Ledger",
    "LedgerError",
    "UpdateFact",
    "enrol_participant",
    "finish_run",
    "ledger_report",
    "normalise_url",
    "record_round",
    "start_run",
]

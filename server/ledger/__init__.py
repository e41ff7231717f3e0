"""The ledger: who took part, with what, and what each round produced."""

from server.ledger.store import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    LedgerError,
    UpdateFact,
    admit_participant,
    admitted_keys,
    enrol_participant,
    finish_run,
    ledger_report,
    normalise_url,
    privacy_spent,
    record_exclusions,
    record_privacy,
    record_round,
    start_run,
)

__all__ = [
    "ChargeFact",
    "ExclusionFact",
    "Ledger",
    "LedgerError",
    "UpdateFact",
    "admit_participant",
    "admitted_keys",
    "enrol_participant",
    "finish_run",
    "ledger_report",
    "normalise_url",
    "privacy_spent",
    "record_exclusions",
    "record_privacy",
    "record_round",
    "start_run",
]

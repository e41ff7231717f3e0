"""The ledger: who took part, with what, and what each round produced.

The package's front door re-exports what the operator's code records and
reads; the modules say more: :mod:`~ledger.store` (opening and
migrating), :mod:`~ledger.facts` (recording), :mod:`~ledger.report`
(reading), :mod:`~ledger.entries` (the hash-chained entries),
:mod:`~ledger.tree_heads` (signed tree heads and receipts), :mod:`~ledger.members`
(each run's members and witness quorum), :mod:`~ledger.suspensions` (members
kept out of later runs) and
:mod:`~ledger.verify` (recomputing everything from the raw rows).
"""

from ledger.contributions import contributions_report, record_valuation
from ledger.facts import (
    SUSPECTED,
    ChargeFact,
    DefenceFact,
    ExclusionFact,
    UpdateFact,
    admit_participant,
    admitted_datasets,
    admitted_keys,
    admitted_records,
    enrol_participant,
    record_defences,
    record_exclusions,
    record_privacy,
    record_round,
    refuse_admission,
)
from ledger.runs import finish_run, start_run
from ledger.schema import ApiToken, Contribution, Valuation
from ledger.store import Ledger, LedgerError, LedgerUnreachable, normalise_url

__all__ = [
    "SUSPECTED",
    "ApiToken",
    "ChargeFact",
    "Contribution",
    "DefenceFact",
    "ExclusionFact",
    "Ledger",
    "LedgerError",
    "LedgerUnreachable",
    "UpdateFact",
    "Valuation",
    "admit_participant",
    "admitted_datasets",
    "admitted_keys",
    "admitted_records",
    "contributions_report",
    "cosignatures",
    "enrol_participant",
    "entries",
    "finish_run",
    "members",
    "normalise_url",
    "provenance",
    "record_defences",
    "record_exclusions",
    "record_privacy",
    "record_round",
    "record_valuation",
    "refuse_admission",
    "report",
    "shapley",
    "start_run",
    "suspensions",
    "tokens",
    "tree_heads",
    "verify",
]

"""The ledger: who took part, with what, and what each round produced.

The package's front door re-exports what the operator's code records and
reads; the modules say more: :mod:`~server.ledger.store` (opening and
migrating), :mod:`~server.ledger.facts` (recording), :mod:`~server.ledger.report`
(reading), :mod:`~server.ledger.entries` (the hash-chained entries),
:mod:`~server.ledger.tree_heads` (signed tree heads and receipts) and
:mod:`~server.ledger.verify` (recomputing everything from the raw rows).
"""

from server.ledger.contributions import (
    Contribution,
    Valuation,
    contributions_report,
    record_valuation,
)
from server.ledger.facts import (
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
from server.ledger.runs import finish_run, start_run
from server.ledger.store import Ledger, LedgerError, LedgerUnreachable, normalise_url
from server.ledger.tokens import ApiToken  # registered with the schema (ledger v11)

__all__ = [
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
    "enrol_participant",
    "finish_run",
    "normalise_url",
    "record_defences",
    "record_exclusions",
    "record_privacy",
    "record_round",
    "record_valuation",
    "refuse_admission",
    "start_run",
]

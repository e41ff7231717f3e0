"""The server's strategy, built from parts around Flower's aggregation.

:class:`ConsortiumStrategy` wraps an aggregation strategy (Flower's
``FedAvgM``) with the :class:`LicenceCheck`, the :class:`UpdateIntake` (which
opens each sealed update through the :class:`UpdateGate` and checks its
claims with the :class:`ClaimCheck`), a
:class:`RoundRecorder`, the :class:`ReceiptOutbox` and the :class:`OwedCharges`
(charges members report they paid that the ledger may lack); :mod:`.kept`
turns an accepted reply into what a snapshot keeps, and back. The
:class:`Defences` bound each update, weight it against the reference update
(:mod:`.trust`) and record the collusion :mod:`.evidence` they see.
"""

from server.app.strategy.claims import ClaimCheck
from server.app.strategy.composed import ConsortiumStrategy, Evaluator, RoundFailed
from server.app.strategy.defences import Defences, Defended
from server.app.strategy.gate import UpdateGate, expected_tensors
from server.app.strategy.intake import UpdateIntake
from server.app.strategy.licence_check import LicenceCheck
from server.app.strategy.outbox import ReceiptOutbox
from server.app.strategy.owed import OwedCharge, OwedCharges
from server.app.strategy.recorder import FinishedRound, LedgerRecorder, NullRecorder, RoundRecorder
from server.app.strategy.robust import NormBound, build_aggregator, rule_effects

__all__ = [
    "ClaimCheck",
    "ConsortiumStrategy",
    "Defences",
    "Defended",
    "Evaluator",
    "FinishedRound",
    "LedgerRecorder",
    "LicenceCheck",
    "NormBound",
    "NullRecorder",
    "OwedCharge",
    "OwedCharges",
    "ReceiptOutbox",
    "RoundFailed",
    "RoundRecorder",
    "UpdateGate",
    "UpdateIntake",
    "build_aggregator",
    "evidence",
    "expected_tensors",
    "kept",
    "rule_effects",
    "trust",
]

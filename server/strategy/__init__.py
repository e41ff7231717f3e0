"""The server's strategy, built from parts around Flower's aggregation.

:class:`ConsortiumStrategy` wraps an aggregation strategy (Flower's
``FedAvgM``) with the :class:`LicenceGate`, the :class:`UpdateIntake` (which
opens each sealed update through the :class:`UpdateGate` and checks its
claims with the :class:`ClaimCheck`), a
:class:`RoundRecorder` and the :class:`ReceiptOutbox`.
"""

from server.strategy.admission import LicenceGate
from server.strategy.claims import ClaimCheck
from server.strategy.composed import ConsortiumStrategy, Evaluator, RoundFailed
from server.strategy.gate import UpdateGate, expected_tensors
from server.strategy.intake import UpdateIntake
from server.strategy.outbox import ReceiptOutbox
from server.strategy.recorder import FinishedRound, LedgerRecorder, NullRecorder, RoundRecorder

__all__ = [
    "ClaimCheck",
    "ConsortiumStrategy",
    "Evaluator",
    "FinishedRound",
    "LedgerRecorder",
    "LicenceGate",
    "NullRecorder",
    "ReceiptOutbox",
    "RoundFailed",
    "RoundRecorder",
    "UpdateGate",
    "UpdateIntake",
    "expected_tensors",
]

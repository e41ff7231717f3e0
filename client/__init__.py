"""What a participant runs beside its data: the ClientApp and the node's own state.

Training with DP (:mod:`client.task`), sealing updates (:mod:`client.sealing`),
enrolment (:mod:`client.enrolment`), the privacy accountant
(:mod:`client.accountant`), the receipt book (:mod:`client.receipts`) and
``fedcommons client ...`` (:mod:`client.cli`). Imports only :mod:`common`.
"""

__all__ = ["accountant", "cli", "client_app", "enrolment", "receipts", "sealing", "task"]

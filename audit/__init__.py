"""What an auditor runs: ledger verification, reports, receipt and model-card checks, the dashboard.

Read-only, and light: it imports the shared contracts (:mod:`common`) and
the ledger's read side (:mod:`ledger`), never torch, Opacus or
transformers.
"""

__all__ = ["card_cli", "card_ledger", "card_proof", "cards", "cli", "compare", "web"]

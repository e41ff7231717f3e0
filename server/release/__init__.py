"""Releases: the model and its card, built from the ledger (:mod:`.release`,
:mod:`.card`, :mod:`.model_card`)."""

__all__ = ["card", "model_card", "release"]

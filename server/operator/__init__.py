"""What the operator's commands run: ``fedcommons operator ...`` (:mod:`.cli`), the
consortium folder (:mod:`.consortium`), the SuperLink (:mod:`.superlink`), the flwr
CLI and the app bundle (:mod:`.flower`), submitting and following runs
(:mod:`.runs`, :mod:`.operate`, :mod:`.progress`), status and API tokens."""

__all__ = [
    "cli",
    "consortium",
    "flower",
    "operate",
    "progress",
    "runs",
    "status",
    "superlink",
    "tokens_cli",
]

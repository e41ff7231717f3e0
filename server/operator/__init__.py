"""What the operator's commands run: ``fedcommons operator ...`` (:mod:`.cli`), the
consortium folder (:mod:`.consortium`), the SuperLink (:mod:`.superlink`), the flwr
CLI and the app bundle (:mod:`.flower`), submitting and following runs
(:mod:`.follow`, :mod:`.operate`, :mod:`.progress`), status (:mod:`.status`), members
suspended and reinstated (:mod:`.suspend_cli`) and API tokens (:mod:`.tokens_cli`)."""

__all__ = [
    "cli",
    "consortium",
    "flower",
    "follow",
    "operate",
    "progress",
    "status",
    "superlink",
    "suspend_cli",
    "tokens_cli",
]

"""What the ``fedcommons`` command does with an error: one clean line and an exit code.

Every room's commands simply raise their own errors (a bad policy, a missing
key, a ledger that does not open, ...), all derived from
:class:`common.errors.UserError`; the root command catches them, prints one
line and exits with :data:`EXIT_USER_ERROR`.
"""

from __future__ import annotations

from common.errors import UserError

__all__ = ["EXIT_USER_ERROR", "USER_ERRORS"]

EXIT_USER_ERROR = 1
"""Exit code of a command refused for a reason its message names."""

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileExistsError)
"""The errors a user can act on: their message is the whole story."""

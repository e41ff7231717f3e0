"""What the ``fedcommons`` command does with an error: one clean line and a documented exit code.

Every room's commands simply raise their own errors (a bad policy, a missing
key, a ledger that does not open, ...), all derived from
:class:`common.errors.UserError`; the root command prints their message as one
line. Anything else is a bug: the root prints one line naming it and the log
file that holds its traceback, never the traceback itself. Passwords in URLs
are masked in both.

Exit codes: 0 done; 1 refused (the message says why; also a ledger that is
not intact); 2 a usage error (a missing or bad option); 70 an internal error
(see the log file); 130 interrupted.
"""

from __future__ import annotations

import os
import re
import traceback
from datetime import datetime, timezone
from pathlib import Path

from common.errors import UserError

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "LOG_DIR_ENV",
    "USER_ERRORS",
    "crash_log_dir",
    "mask_secrets",
    "write_crash_log",
]

EXIT_USER_ERROR = 1
"""A command refused for a reason its message names."""
EXIT_INTERNAL = 70
"""An unexpected error (``EX_SOFTWARE``): a bug; the traceback is in a log file."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM."""
EXIT_BROKEN_PIPE = 141
"""The output's reader went away (``fedcommons ... | head``): 128 + SIGPIPE, as shells report."""
LOG_DIR_ENV = "FEDCOMMONS_LOG_DIR"

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileExistsError)
"""The errors a user can act on: their message is the whole story."""

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)[^@\s]+@")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced by ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***@", text)


def crash_log_dir() -> Path:
    """``$FEDCOMMONS_LOG_DIR``, else ``$XDG_STATE_HOME/fedcommons``, else ``~/.local/state/...``."""
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fedcommons"


def write_crash_log(err: BaseException, command: list[str]) -> Path:
    """Write ``err``'s traceback (secrets masked) to a new log file; return its path."""
    folder = crash_log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = folder / f"error-{stamp}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(err))
    path.write_text(mask_secrets(f"fedcommons {' '.join(command)}\n\n{text}"), encoding="utf-8")
    return path

"""Named, expiring API tokens for the read-only dashboard (``fedcommons audit serve``).

The operator issues a token for each reader (``fedcommons operator token
issue``); the token is shown once and only its SHA-256 is stored, in the
ledger database's ``api_tokens`` table (ledger v11). Tokens are access
control, not facts about the federation: they are not ledger entries, and
revoking one changes no entry. A token is good until it expires or is
revoked; anything else is refused alike.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.schema import ApiToken, utcnow
from ledger.store import LedgerError

__all__ = [
    "TokenInfo",
    "check_token",
    "issue_token",
    "list_tokens",
    "parse_lifetime",
    "revoke_token",
]

PREFIX = "fct_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LIFETIME = re.compile(r"(\d{1,4})([dhm])")
MAX_LIFETIME = timedelta(days=366)


@dataclass(frozen=True)
class TokenInfo:
    """What ``token list`` shows: never the token or its hash."""

    name: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None

    def status(self, now: datetime | None = None) -> str:
        now = now or utcnow()
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if _aware(self.expires_at) <= now else "active"


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for the UTC ones stored."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_lifetime(text: str) -> timedelta:
    """``30d``, ``12h`` or ``90m`` (at most a year); ``ValueError`` otherwise."""
    match = LIFETIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"a lifetime is a number and d, h or m (e.g. 30d, 12h), got {text!r}")
    count, unit = int(match.group(1)), match.group(2)
    lifetime = {"d": timedelta(days=count), "h": timedelta(hours=count)}.get(
        unit, timedelta(minutes=count)
    )
    if not timedelta(minutes=1) <= lifetime <= MAX_LIFETIME:
        raise ValueError(f"a lifetime must be from 1m to 366d, got {text!r}")
    return lifetime


def issue_token(session: Session, name: str, lifetime: timedelta) -> str:
    """Store a new token named ``name``; return the token (shown once, never stored)."""
    if NAME.fullmatch(name) is None:
        raise LedgerError(
            f"a token name is 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
            f"or digit), got {name!r}"
        )
    if session.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
        raise LedgerError(f"a token named {name!r} exists: revoke it or choose another name")
    token = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    session.add(ApiToken(name=name, token_sha256=_digest(token), created_at=now,
                         expires_at=now + lifetime))  # fmt: skip
    session.flush()
    return token


def list_tokens(session: Session) -> list[TokenInfo]:
    """Every token ever issued, by name."""
    return [
        TokenInfo(t.name, _aware(t.created_at), _aware(t.expires_at),
                  _aware(t.revoked_at) if t.revoked_at else None)
        for t in session.scalars(select(ApiToken).order_by(ApiToken.name))
    ]  # fmt: skip


def revoke_token(session: Session, name: str) -> None:
    """Revoke the token named ``name`` (at once); revoking twice changes nothing."""
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise LedgerError(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()


def check_token(session: Session, presented: str | None) -> str | None:
    """The name of the active token ``presented`` is; ``None`` for anything else."""
    if not presented or not presented.startswith(PREFIX) or len(presented) > 128:
        return None
    digest = _digest(presented)
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest))
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    if row.revoked_at is not None or _aware(row.expires_at) <= utcnow():
        return None
    return row.name

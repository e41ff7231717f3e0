"""Data licences as structured terms, checked against a run's purpose.

A participant declares its data's licence as an SPDX id whose terms are
built in (:data:`SPDX`), or as custom terms in a TOML file. A run declares
its purpose (:data:`PURPOSES`); :meth:`Licence.refusal` says why a licence
does not allow it, and :func:`obligations` combines the terms of every
dataset that contributed to a model (attribution, non-commercial,
share-alike) for its model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import tomllib

from common.errors import UserError

__all__ = [
    "PURPOSES",
    "SPDX",
    "Licence",
    "LicenceError",
    "Obligations",
    "obligations",
    "parse_licence",
    "with_expiry",
]

PURPOSES = ("research", "education", "commercial")
"""What a run may be for; a non-commercial licence allows research and education."""


class LicenceError(UserError, ValueError):
    """A licence declaration that is unknown, malformed, expired or contradictory."""


@dataclass(frozen=True)
class Licence:
    """The terms a dataset is offered under.

    Parameters
    ----------
    id : str
        The SPDX id, or ``"custom"``.
    commercial : bool
        Commercial use allowed.
    derivatives : bool
        Derived works (such as a trained model) allowed.
    share_alike : bool
        Derived works must carry the same terms.
    attribution : str
        Text to credit in every derived work; empty if none is required.
    purposes : tuple of str
        Purposes the data may be used for.
    expires : date or None
        Last day the data may be used; ``None`` for no end.
    """

    id: str
    commercial: bool
    derivatives: bool
    share_alike: bool
    attribution: str
    purposes: tuple[str, ...]
    expires: date | None = None

    def refusal(self, purpose: str, on: date) -> str | None:
        """Why this licence does not allow ``purpose`` on day ``on``; ``None`` if it does."""
        if purpose not in PURPOSES:
            raise LicenceError(f"unknown purpose {purpose!r}; one of {', '.join(PURPOSES)}")
        if self.expires is not None and on > self.expires:
            return f"licence {self.id} expired on {self.expires.isoformat()}"
        if not self.derivatives:
            return f"licence {self.id} forbids derived works, and a trained model is one"
        if purpose not in self.purposes:
            return f"licence {self.id} allows {', '.join(self.purposes)}, not {purpose} use"
        return None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["purposes"] = list(self.purposes)
        doc["expires"] = self.expires.isoformat() if self.expires else None
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Licence:
        """Read :meth:`to_dict` output back, validating it (not the expiry)."""
        try:
            expires = doc.get("expires")
            licence = cls(
                id=str(doc["id"]),
                commercial=_bool(doc, "commercial"),
                derivatives=_bool(doc, "derivatives"),
                share_alike=_bool(doc, "share_alike"),
                attribution=str(doc.get("attribution", "")),
                purposes=tuple(doc["purposes"]),
                expires=date.fromisoformat(expires) if expires else None,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise LicenceError(f"malformed licence terms {doc!r}: {err}") from None
        _check_terms(licence)
        return licence


def _bool(doc: dict[str, Any], key: str) -> bool:
    value = doc[key]
    if not isinstance(value, bool):
        raise LicenceError(f"licence term '{key}' must be true or false, not {value!r}")
    return value


def _spdx(id: str, *, commercial: bool, share_alike: bool, attribution: bool) -> Licence:
    purposes = PURPOSES if commercial else ("research", "education")
    credit = "the data provider, as its licence requires" if attribution else ""
    return Licence(id, commercial, True, share_alike, credit, purposes)


SPDX: dict[str, Licence] = {
    "CC0-1.0": _spdx("CC0-1.0", commercial=True, share_alike=False, attribution=False),
    "CC-BY-4.0": _spdx("CC-BY-4.0", commercial=True, share_alike=False, attribution=True),
    "CC-BY-SA-4.0": _spdx("CC-BY-SA-4.0", commercial=True, share_alike=True, attribution=True),
    "CC-BY-NC-4.0": _spdx("CC-BY-NC-4.0", commercial=False, share_alike=False, attribution=True),
    "CC-BY-NC-SA-4.0": _spdx(
        "CC-BY-NC-SA-4.0", commercial=False, share_alike=True, attribution=True
    ),
    "ODbL-1.0": _spdx("ODbL-1.0", commercial=True, share_alike=True, attribution=True),
    "CDLA-Permissive-2.0": _spdx(
        "CDLA-Permissive-2.0", commercial=True, share_alike=False, attribution=False
    ),
    "CDLA-Sharing-1.0": _spdx(
        "CDLA-Sharing-1.0", commercial=True, share_alike=True, attribution=True
    ),
}
"""The common data licences, with their terms for a model trained on the data."""


def _check_terms(licence: Licence) -> None:
    unknown = [p for p in licence.purposes if p not in PURPOSES]
    if unknown:
        raise LicenceError(
            f"licence {licence.id}: unknown purposes {unknown}; allowed: {', '.join(PURPOSES)}"
        )
    if not licence.purposes:
        raise LicenceError(f"licence {licence.id} permits no purpose at all")
    if licence.commercial != ("commercial" in licence.purposes):
        raise LicenceError(
            f"licence {licence.id} is contradictory: commercial = "
            f"{str(licence.commercial).lower()} but purposes are {list(licence.purposes)}"
        )
    if licence.share_alike and not licence.derivatives:
        raise LicenceError(
            f"licence {licence.id} is contradictory: share-alike terms govern derived "
            "works, which it forbids"
        )


def parse_licence(value: str, *, today: date | None = None) -> Licence:
    """An SPDX id from :data:`SPDX`, or the path of a TOML file with custom terms.

    The TOML file holds ``commercial``, ``derivatives``, ``share-alike``
    (booleans), ``attribution`` (text), ``purposes`` (a list) and optionally
    ``expires`` (a date) and ``name``.

    Raises
    ------
    LicenceError
        An unknown id, an unreadable file, unknown or missing terms,
        contradictory terms, or an expiry date already past.
    """
    today = today or date.today()
    if value in SPDX:
        return SPDX[value]
    path = Path(value)
    if path.suffix != ".toml":
        raise LicenceError(
            f"unknown licence {value!r}: give one of {', '.join(SPDX)}, or a .toml file "
            "with custom terms"
        )
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise LicenceError(f"cannot read licence terms {path}: {err}") from None
    allowed = {"name", "commercial", "derivatives", "share-alike", "attribution", "purposes",
               "expires"}  # fmt: skip
    if set(doc) - allowed:
        raise LicenceError(
            f"{path}: unknown licence terms {sorted(set(doc) - allowed)}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    missing = {"commercial", "derivatives", "share-alike", "purposes"} - set(doc)
    if missing:
        raise LicenceError(f"{path}: licence terms lack {', '.join(sorted(missing))}")
    expires = doc.get("expires")
    if expires is not None and not isinstance(expires, date):
        raise LicenceError(f"{path}: 'expires' must be a TOML date (e.g. 2027-12-31)")
    if not isinstance(doc["purposes"], list):
        raise LicenceError(f"{path}: 'purposes' must be a list, e.g. [\"research\"]")
    try:
        licence = Licence(
            id=f"custom:{doc.get('name', path.stem)}",
            commercial=_bool(doc, "commercial"),
            derivatives=_bool(doc, "derivatives"),
            share_alike=_bool(doc, "share-alike"),
            attribution=str(doc.get("attribution", "")),
            purposes=tuple(str(p) for p in doc["purposes"]),
            expires=expires,
        )
    except LicenceError as err:
        raise LicenceError(f"{path}: {err}") from None
    _check_terms(licence)
    if licence.expires is not None and licence.expires < today:
        raise LicenceError(f"{path}: the licence expired on {licence.expires.isoformat()}")
    return licence


@dataclass(frozen=True)
class Obligations:
    """What a model trained on several datasets owes, for its model card."""

    attribution: tuple[str, ...]
    non_commercial: bool
    share_alike: tuple[str, ...]
    """Licence ids whose share-alike terms the model inherits."""


def obligations(contributions: list[tuple[str, Licence]]) -> Obligations:
    """Combine the licences of ``(institution, licence)`` pairs that contributed."""
    attribution = tuple(
        f"{institution}: {licence.attribution}"
        for institution, licence in contributions
        if licence.attribution
    )
    return Obligations(
        attribution=attribution,
        non_commercial=any(not licence.commercial for _, licence in contributions),
        share_alike=tuple(sorted({lic.id for _, lic in contributions if lic.share_alike})),
    )


def with_expiry(licence: Licence, expires: date | None) -> Licence:
    """``licence`` with another expiry date (for an SPDX licence granted for a period)."""
    return replace(licence, expires=expires)

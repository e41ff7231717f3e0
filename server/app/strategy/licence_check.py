"""The licence check: may an institution's data be used for this run, today?

Admission (``fedcommons operator admit``) refuses data whose licence does not
allow the consortium's purpose; this check runs again every round, so a
licence that expires mid-run excludes the institution from then on. It
answers two questions: before a round, whether a node may be asked to train
at all (:meth:`LicenceCheck.blocked`), and for each update, whether the
dataset it was trained on was admitted and may still be used
(:meth:`LicenceCheck.check_update`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date

from common.envelope import EnvelopeError, UpdateHeader
from common.licences import Licence

__all__ = ["LicenceCheck"]


class LicenceCheck:
    """Checks the admitted datasets' licences against the run's purpose.

    Parameters
    ----------
    licences : mapping, optional
        Licence terms of every admitted dataset, by (institution, dataset
        sha256). ``None`` checks nothing (every node and update passes).
    purpose : str (default: "research")
        The run's purpose (``federation.purpose``).
    today : callable (default: ``date.today``)
        The date licences are checked against.
    """

    def __init__(
        self,
        licences: Mapping[tuple[str, str], Licence] | None,
        *,
        purpose: str = "research",
        today: Callable[[], date] = date.today,
    ) -> None:
        self.licences = dict(licences) if licences is not None else None
        self.purpose = purpose
        self.today = today

    def blocked(self, institution: str) -> str | None:
        """Why none of ``institution``'s datasets may be used today; ``None`` if one may."""
        if self.licences is None:
            return None
        reasons = [
            licence.refusal(self.purpose, self.today())
            for (name, _), licence in self.licences.items()
            if name == institution
        ]
        if not reasons:
            return f"{institution} has no admitted dataset"
        if any(r is None for r in reasons):
            return None
        return "; ".join(r for r in reasons if r)

    def check_update(self, header: UpdateHeader) -> None:
        """Reject an update from a dataset not admitted, or whose licence no longer allows it.

        Raises
        ------
        EnvelopeError
            ``unknown-dataset`` or ``licence``, with the reason.
        """
        if self.licences is None:
            return
        dataset = header.privacy.dataset_sha256
        licence = self.licences.get((header.participant, dataset))
        if licence is None:
            raise EnvelopeError(
                "unknown-dataset",
                f"{header.participant} trained on dataset {dataset[:16]}..., which it did not "
                "declare at admission",
            )
        refusal = licence.refusal(self.purpose, self.today())
        if refusal is not None:
            raise EnvelopeError("licence", f"{refusal} ({self.purpose} run)")

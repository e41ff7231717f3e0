"""What an update claims, checked against what its participant declared at admission.

A signature proves who sent an update, not that its claims are honest. The
example count a participant signs weights its update in the average, so a
count above the record count of the dataset it declared at admission (its
manifest, in the ledger) would buy it the round: it is rejected, with both
numbers in the ledger's reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from common.envelope import EnvelopeError, UpdateHeader

__all__ = ["ClaimCheck"]


class ClaimCheck:
    """Rejects an update claiming more examples than its admitted dataset holds.

    Parameters
    ----------
    records : mapping, optional
        Record count of every admitted dataset, by (institution, dataset
        sha256), as its manifest declared at admission. ``None`` checks nothing.
    """

    def __init__(self, records: Mapping[tuple[str, str], int] | None) -> None:
        self.records = dict(records) if records is not None else None

    def check(self, header: UpdateHeader) -> None:
        """:class:`EnvelopeError` ``inflated-claim`` if ``header`` claims too many examples."""
        if self.records is None:
            return
        dataset = header.privacy.dataset_sha256
        declared = self.records.get((header.participant, dataset))
        if declared is None:
            raise EnvelopeError(
                "unknown-dataset",
                f"{header.participant} trained on dataset {dataset[:16]}..., which it did not "
                "declare at admission",
            )
        if header.num_examples > declared:
            raise EnvelopeError(
                "inflated-claim",
                f"{header.participant} claims {header.num_examples} examples, but the dataset "
                f"it declared at admission ({dataset[:16]}...) has {declared} records",
            )

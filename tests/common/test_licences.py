"""Structured data licences: built-in SPDX terms, custom terms, purpose checks, obligations."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from common.licences import (
    PURPOSES,
    SPDX,
    LicenceError,
    obligations,
    parse_licence,
    with_expiry,
)

TODAY = date(2026, 11, 23)

# purpose -> the SPDX licences that allow it (the admission matrix)
ALLOWED = {
    "research": set(SPDX),
    "education": set(SPDX),
    "commercial": set(SPDX) - {"CC-BY-NC-4.0", "CC-BY-NC-SA-4.0"},
}


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize("spdx", sorted(SPDX))
def test_admission_matrix_purpose_by_licence(spdx: str, purpose: str) -> None:
    refusal = parse_licence(spdx, today=TODAY).refusal(purpose, TODAY)
    if spdx in ALLOWED[purpose]:
        assert refusal is None
    else:
        assert refusal == f"licence {spdx} allows research, education, not {purpose} use"


def _terms(tmp_path: Path, text: str, name: str = "terms.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_custom_terms_for_research_only_with_an_expiry(tmp_path: Path) -> None:
    path = _terms(
        tmp_path,
        'name = "company-c-corpus"\ncommercial = false\nderivatives = true\n'
        'share-alike = false\nattribution = "Company C"\npurposes = ["research"]\n'
        "expires = 2027-06-30\n",
    )
    licence = parse_licence(path, today=TODAY)
    assert licence.id == "custom:company-c-corpus"
    assert licence.refusal("research", TODAY) is None
    assert licence.refusal("education", TODAY) == (
        "licence custom:company-c-corpus allows research, not education use"
    )
    assert licence.refusal("research", date(2027, 7, 1)) == (
        "licence custom:company-c-corpus expired on 2027-06-30"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("commercial = true\nderivatives = true\nshare-alike = false\npurposes = [\"research\"]",
         "contradictory: commercial = true but purposes are \\['research'\\]"),
        ("commercial = false\nderivatives = false\nshare-alike = true\npurposes = [\"research\"]",
         "contradictory: share-alike terms govern derived works"),
        ("commercial = false\nderivatives = true\nshare-alike = false\npurposes = [\"war\"]",
         "unknown purposes \\['war'\\]"),
        ("commercial = false\nderivatives = true\nshare-alike = false\npurposes = []",
         "permits no purpose"),
        ("commercial = false\nderivatives = true\nshare-alike = false\n"
         "purposes = [\"research\"]\nexpires = 2020-01-01", "expired on 2020-01-01"),
        ("commercial = false\nderivatives = true\npurposes = [\"research\"]",
         "lack share-alike"),
        ("commercial = \"no\"\nderivatives = true\nshare-alike = false\npurposes = [\"research\"]",
         "'commercial' must be true or false"),
        ("commercial = false\nderivatives = true\nshare-alike = false\npurposes = [\"research\"]"
         "\nroyalties = 3", "unknown licence terms \\['royalties'\\]"),
        ("commercial = false\nderivatives = true\nshare-alike = false\npurposes = [\"research\"]"
         "\nexpires = \"soon\"", "'expires' must be a TOML date"),
        ("commercial = [", "cannot read licence terms"),
    ],
)  # fmt: skip
def test_bad_custom_terms_fail_clearly(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LicenceError, match=message):
        parse_licence(_terms(tmp_path, text), today=TODAY)


def test_unknown_ids_and_missing_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(
        LicenceError, match=re.escape("unknown licence 'CC-BY-5.0': give one of CC0-1.0")
    ):
        parse_licence("CC-BY-5.0")
    with pytest.raises(LicenceError, match="cannot read licence terms"):
        parse_licence(str(tmp_path / "absent.toml"))


def test_terms_round_trip_through_json_and_an_spdx_licence_can_expire() -> None:
    licence = with_expiry(SPDX["CC-BY-SA-4.0"], date(2026, 12, 31))
    assert type(licence).from_dict(licence.to_dict()) == licence
    assert licence.refusal("commercial", date(2027, 1, 1)) == (
        "licence CC-BY-SA-4.0 expired on 2026-12-31"
    )
    with pytest.raises(LicenceError, match="unknown purpose 'mining'"):
        licence.refusal("mining", TODAY)


def test_obligations_combine_attribution_non_commercial_and_share_alike(tmp_path: Path) -> None:
    custom = parse_licence(
        _terms(
            tmp_path,
            "commercial = false\nderivatives = true\nshare-alike = false\n"
            'attribution = "Company C corpus"\npurposes = ["research"]\n',
        ),
        today=TODAY,
    )
    combined = obligations(
        [
            ("university-a", SPDX["CC-BY-4.0"]),
            ("university-b", SPDX["CC-BY-NC-4.0"]),
            ("company-c", custom),
        ]
    )
    assert combined.non_commercial is True
    assert combined.share_alike == ()
    assert [line.split(":")[0] for line in combined.attribution] == [
        "university-a",
        "university-b",
        "company-c",
    ]
    assert combined.attribution[-1] == "company-c: Company C corpus"
    open_only = obligations([("a", SPDX["CC0-1.0"]), ("b", SPDX["ODbL-1.0"])])
    assert (open_only.non_commercial, open_only.share_alike) == (False, ("ODbL-1.0",))
    assert open_only.attribution == ("b: the data provider, as its licence requires",)

"""Trust bootstrapping and collusion evidence, as two colluding members would try them.

Through the composed strategy with real sealed envelopes from five
participants (genuine keys, counts within their claims), a reference update
the colluders cannot change, facts read back from the real ledger (SQLite
file and PostgreSQL), and the ledger verified after.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from common.arrays import Arrays, arrays_of
from common.policy import FederationConfig, Policy, PolicyError
from ledger.report import ledger_report
from ledger.shapley import exact_values
from ledger.verify import verify_ledger
from server.app.strategy import ConsortiumStrategy, Defences, build_aggregator
from server.app.strategy.evidence import Evidence
from server.app.strategy.trust import trust_weigh
from server.app.valuation import CoalitionUtility
from tests.support.sealed_updates import (
    begin_round,
    ledger_with_run,
    make_strategy,
    sealed_reply,
    server_task_identity,
)

pytestmark = pytest.mark.usefixtures("server_task_identity")
assert server_task_identity  # imported so that pytest finds the fixture

NAMES = ("inst0", "inst1", "inst2", "i0", "i1")
NODES = (10, 11, 12, 13, 14)
MODEL = {"w": np.zeros(4, np.float32)}
REFERENCE = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
"""The reference update the operator's trusted data give (norm sqrt 2)."""
HONEST = [np.array(v, np.float32) for v in ([2, 1, 1, 0], [1, 3, 0, 1], [3, 2, -1, 0])]


def _reference(weights: Arrays, server_round: int) -> Arrays:
    return {"w": weights["w"] + REFERENCE}


def _federation(**values: object) -> FederationConfig:
    return Policy.from_sections({"federation": {"min-nodes": 3, **values}}).federation


def _strategy(
    tmp_path: Path, federation: FederationConfig, scorer: Callable[[Arrays], np.ndarray] | None
) -> tuple[ConsortiumStrategy, object, int]:
    ledger, run_id = ledger_with_run(tmp_path, NAMES)
    strategy = make_strategy(
        tmp_path,
        ledger,
        run_id,
        min_nodes=3,
        model=MODEL,
        aggregator=build_aggregator(federation),
        nodes=NODES,
    )
    strategy.defences = Defences.of(federation, _reference, scorer)
    return strategy, ledger, run_id


def _round(
    strategy: ConsortiumStrategy, updates: list[np.ndarray], server_round: int = 1
) -> np.ndarray:
    if server_round > 1:
        begin_round(strategy, server_round, MODEL, NODES)
    replies = [
        sealed_reply(node, name, {"w": w}, 100, server_round=server_round, model=MODEL)
        for node, name, w in zip(NODES, NAMES, updates, strict=True)
    ]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    assert arrays is not None
    return arrays_of(arrays)["w"]


def _facts(ledger: object) -> list[dict[str, object]]:
    with ledger.session() as s:  # type: ignore[attr-defined]
        (run,) = ledger_report(s)["runs"]
    assert verify_ledger(ledger).rows_checked > 0  # type: ignore[arg-type]
    return list(run["defences"])


def test_the_weights_are_the_positive_cosines_and_every_update_has_the_references_norm() -> None:
    start = {"w": np.zeros(4, np.float32)}
    updates = [("a", {"w": np.array([3, 3, 0, 0], np.float32)}),  # cosine 1
               ("b", {"w": np.array([1, 0, 0, 0], np.float32)}),  # cosine 1/sqrt 2
               ("c", {"w": np.array([-5, -5, 1, 0], np.float32)})]  # pointing away  # fmt: skip
    trust = trust_weigh(start, updates, REFERENCE.astype(np.float64))
    cos_b = 1 / np.sqrt(2)
    np.testing.assert_allclose(trust.cosines[:2], [1.0, cos_b], rtol=1e-6)
    assert trust.cosines[2] < 0
    np.testing.assert_allclose(trust.weights, [1 / (1 + cos_b), cos_b / (1 + cos_b), 0.0])
    for arrays in trust.arrays:
        assert np.linalg.norm(arrays["w"]) == pytest.approx(np.sqrt(2), rel=1e-6)
    assert [f.action for f in trust.facts] == ["weighted", "weighted", "weighted zero"]
    assert "cosine -" in trust.facts[2].detail and trust.facts[2].share == 1.0


def test_two_colluders_under_the_norm_bound_weigh_nothing_and_are_named(tmp_path: Path) -> None:
    """The issue's attack: both send the same update against the honest mean, just under
    the median norm. Without trust their norms set the bound; with it they weigh zero."""
    mean = np.mean(HONEST, axis=0)
    median = np.median([np.linalg.norm(h) for h in HONEST])
    attack = (-mean / np.linalg.norm(mean) * 0.99 * median).astype(np.float32)
    strategy, ledger, _ = _strategy(tmp_path, _federation(), None)
    result = _round(strategy, [*HONEST, attack, attack.copy()])
    trust = trust_weigh(
        MODEL, [(n, {"w": h}) for n, h in zip(NAMES, HONEST, strict=False)], REFERENCE
    )
    expected = sum(w * a["w"] for w, a in zip(trust.weights, trust.arrays, strict=True))
    np.testing.assert_allclose(result, expected, rtol=1e-5)  # the honest three, trust-weighted
    facts = _facts(ledger)
    zero = {f["institution"] for f in facts if f["rule"] == "trust" and f["action"] != "weighted"}
    assert zero == {"i0", "i1"}
    twins = [f for f in facts if f["rule"] == "near-identical"]
    assert {f["institution"] for f in twins} == {"i0", "i1"}
    assert all(f["action"] == "suspected" for f in twins)
    assert "i1's (cosine 1.0000)" in str(next(f for f in twins if f["institution"] == "i0"))
    values = {n: w for n, _, w in strategy.round_updates()}
    assert values["i0"] == values["i1"] == 0.0  # what the valuation weighs them by
    ledger.close()  # type: ignore[attr-defined]


def test_weighted_zero_twice_is_evidence_and_a_round_all_zero_keeps_the_model(
    tmp_path: Path,
) -> None:
    strategy, ledger, _ = _strategy(tmp_path, _federation(), None)
    away = np.array([-1, -1, 0, 0], np.float32)
    _round(strategy, [*HONEST, away, away * 2], server_round=1)
    assert not [f for f in _facts(ledger) if f["rule"] == "zero-weight"]
    kept = _round(strategy, [-h for h in HONEST] + [away, away * 3], server_round=2)
    np.testing.assert_array_equal(kept, MODEL["w"])  # nothing points where the data lead
    zero = [f for f in _facts(ledger) if f["rule"] == "zero-weight"]
    assert {f["institution"] for f in zero} == {"i0", "i1"}
    assert all("in 2 rounds" in str(f["detail"]) for f in zero)
    ledger.close()  # type: ignore[attr-defined]


def test_a_reference_norm_bound_clips_to_the_reference_without_trust(tmp_path: Path) -> None:
    federation = _federation(trust="off", **{"update-norm-bound": "reference"})
    strategy, ledger, _ = _strategy(tmp_path, federation, None)
    long = np.array([30, 40, 0, 0], np.float32)  # norm 50
    _round(strategy, [*HONEST, long, HONEST[0]])
    clipped = {f["institution"]: f for f in _facts(ledger) if f["rule"] == "norm-bound"}
    assert clipped["i0"]["norm_after"] == pytest.approx(np.sqrt(2))
    assert "reference update" in str(clipped["i0"]["detail"])
    ledger.close()  # type: ignore[attr-defined]


def test_one_class_dropping_names_the_update_that_drops_it(tmp_path: Path) -> None:
    """Class 0's accuracy is the model's first weight; a member whose update alone zeroes
    it while the rest hold is named; the honest ones are not."""

    def scorer(weights: Arrays) -> np.ndarray:
        w = weights["w"]
        return np.array([1.0 if w[0] > -0.5 else 0.0, 0.8, 0.8, 0.8])

    evidence = Evidence(0.99, 0.25, scorer)
    start = {"w": np.zeros(4, np.float32)}
    honest = ("inst0", {"w": np.array([0.1, 1, 0, 0], np.float32)})
    targeted = ("i1", {"w": np.array([-2, 1, 0, 0], np.float32)})
    after = {"w": np.array([-0.9, 1, 0, 0], np.float32)}
    (fact,) = evidence.class_drops(start, after, [honest, targeted])
    assert (fact.institution, fact.rule, fact.action) == ("i1", "class-drop", "suspected")
    assert "class 0 accuracy fell 1.00 -> 0.00" in fact.detail
    assert evidence.class_drops(start, {"w": np.zeros(4, np.float32)}, [honest, targeted]) == []


def test_a_member_weighted_zero_is_worth_nothing_in_the_valuation() -> None:
    start = {"w": np.zeros(2, np.float32)}
    updates = [("a", {"w": np.array([1, 0], np.float32)}, 0.6),
               ("b", {"w": np.array([0, 1], np.float32)}, 0.4),
               ("z", {"w": np.array([-9, -9], np.float32)}, 0.0)]  # fmt: skip
    utility = CoalitionUtility(start, updates, lambda w: (0.0, float(w["w"].sum()) / 10))
    values = dict(zip(utility.players, exact_values(3, utility), strict=True))
    assert values["z"] == 0  # a null player: every coalition's aggregate ignores it
    assert values["a"] > 0 and values["b"] > 0


def test_the_policy_refuses_unknown_trust_and_a_reference_needs_a_trusted_set() -> None:
    with pytest.raises(PolicyError, match=r"federation.trust.*one of: reference, off"):
        _federation(trust="members")
    with pytest.raises(PolicyError, match="evidence-cosine"):
        _federation(**{"evidence-cosine": 1.5})
    with pytest.raises(ValueError, match="need a trusted set"):
        Defences.of(_federation())
    with pytest.raises(ValueError, match="need a trusted set"):
        Defences.of(_federation(trust="off", **{"update-norm-bound": "reference"}))
    assert Defences.of(_federation(trust="off")).reference is None


def test_near_identical_updates_share_one_updates_weight(tmp_path: Path) -> None:
    """A Little Is Enough sends one update from both colluders: they count as one."""
    alie = (np.mean(HONEST, axis=0) - np.std(HONEST, axis=0)).astype(np.float32)
    strategy, ledger, _ = _strategy(tmp_path, _federation(), None)
    _round(strategy, [*HONEST, alie, alie.copy()])
    weights = {n: w for n, _, w in strategy.round_updates()}
    single = trust_weigh(
        MODEL, [(n, {"w": u}) for n, u in zip(NAMES, [*HONEST, alie], strict=False)], REFERENCE
    ).weights  # the same round with one colluder
    assert weights["i0"] == weights["i1"] == pytest.approx(single[3] / 2)
    assert sum(weights.values()) == pytest.approx(1.0)
    shared = [f for f in _facts(ledger) if f["action"] == "shared"]
    assert {f["institution"] for f in shared} == {"i0", "i1"}
    assert "counts as one update" in str(shared[0]["detail"])
    ledger.close()  # type: ignore[attr-defined]

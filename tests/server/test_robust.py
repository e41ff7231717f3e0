"""Robust aggregation: Flower's rules chosen by the policy, the norm bound, and their record.

Through the composed strategy with real sealed envelopes from five
participants; numbers checked against NumPy, reasons read back from the
ledger, and the ledger verified after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvgM, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from common.arrays import arrays_of
from common.images import ImageData
from common.local_data import load_local_data
from common.policy import FederationConfig, Policy, PolicyError
from fedcommons.demo_setup import prepare_data
from ledger.contributions import contributions_report
from ledger.report import ledger_report
from ledger.verify import verify_ledger
from server.app.strategy import Defences, LedgerRecorder, NormBound, build_aggregator, rule_effects
from server.app.valuation import Valuer
from tests.support.attacks import ATTACKS
from tests.support.hostile_federation import FLOWER_RUN, LABEL_FLIP, HostileFederation
from tests.support.sealed_updates import (
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
RECORDS = {(name, "d" * 64): 100 for name in NAMES}
HONEST = [np.array(v, np.float32) for v in ([1, 2, 3, 4], [2, 2, 2, 2], [1, 1, 3, 3], [2, 3, 2, 3])]


def _federation(**values: object) -> FederationConfig:
    """A [federation] section without trust weighting or evidence (see test_trust.py)."""
    return Policy.from_sections(
        {"federation": {"min-nodes": 5, "trust": "off", "evidence-cosine": 1.0, **values}}
    ).federation


def _run(
    tmp_path: Path, federation: FederationConfig, attack: np.ndarray
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """One round through the composed strategy: four honest updates and ``attack`` from i1."""
    ledger, run_id = ledger_with_run(tmp_path, NAMES)
    strategy = make_strategy(
        tmp_path,
        ledger,
        run_id,
        min_nodes=5,
        model=MODEL,
        aggregator=build_aggregator(federation),
        nodes=NODES,
    )
    strategy.defences = Defences.of(federation)
    replies = [
        sealed_reply(node, name, {"w": w}, 100, model=MODEL)
        for node, name, w in zip(NODES, NAMES, [*HONEST, attack], strict=True)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert verify_ledger(ledger).rows_checked > 0
    ledger.close()
    return arrays_of(arrays)["w"], run["defences"]


# -- the policy chooses Flower's class ----------------------------------------------


@pytest.mark.parametrize(
    ("rule", "cls"),
    [
        ("fedavg", FedAvgM),
        ("trimmed-mean", FedTrimmedAvg),
        ("median", FedMedian),
        ("krum", Krum),
        ("multi-krum", MultiKrum),
    ],
)
def test_the_policy_names_flowers_own_class(rule: str, cls: type) -> None:
    aggregator = build_aggregator(_federation(aggregator=rule, **{"update-norm-bound": "off"}))
    assert type(aggregator) is cls
    assert aggregator.min_available_nodes == 5


def test_median_is_the_coordinate_wise_median_of_the_updates(tmp_path: Path) -> None:
    attack = np.full(4, 1000.0, np.float32)
    federation = _federation(aggregator="median", **{"update-norm-bound": "off"})
    result, defences = _run(tmp_path, federation, attack)
    np.testing.assert_allclose(result, np.median(np.stack([*HONEST, attack]), axis=0))
    attacker = [d for d in defences if d["institution"] == "i1"]
    assert attacker == [
        {
            "round": 1, "institution": "i1", "rule": "median", "action": "trimmed",
            "norm_before": None, "norm_after": None, "share": 1.0,
            "detail": "100.0% of its coordinates unused (not the median)",
        }
    ]  # fmt: skip


def test_trimmed_mean_is_the_mean_without_the_extremes(tmp_path: Path) -> None:
    attack = np.full(4, -1000.0, np.float32)
    federation = _federation(aggregator="trimmed-mean", **{"update-norm-bound": "off"})
    result, defences = _run(tmp_path, federation, attack)
    stack = np.sort(np.stack([*HONEST, attack]), axis=0)
    np.testing.assert_allclose(result, stack[1:-1].mean(axis=0), rtol=1e-6)  # cut 1 of 5 per end
    shares = {d["institution"]: d["share"] for d in defences}
    assert shares["i1"] == 1.0  # every coordinate of the attack was cut


def test_krum_keeps_one_update_and_records_the_others_as_discarded(tmp_path: Path) -> None:
    attack = np.full(4, 1000.0, np.float32)
    federation = _federation(aggregator="krum", byzantine=1, **{"update-norm-bound": "off"})
    result, defences = _run(tmp_path, federation, attack)
    assert any(np.array_equal(result, h) for h in HONEST)  # one honest update, as it was
    discarded = sorted(str(d["institution"]) for d in defences if d["action"] == "discarded")
    assert len(discarded) == 4 and "i1" in discarded


RULES = {
    "fedavg": {},
    "trimmed-mean": {},
    "median": {},
    "krum": {"byzantine": 1},
    "multi-krum": {"byzantine": 1},
    "bulyan": {},
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_is_valued_and_recorded(tmp_path: Path, rule: str) -> None:
    """Flower's FedMedian and FedTrimmedAvg pop the arrays out of the replies they aggregate;
    valuation, after them, reads the updates as the rule received them."""
    federation = _federation(aggregator=rule, **RULES[rule])
    ledger, run_id = ledger_with_run(tmp_path, NAMES)

    def distance(w: dict[str, np.ndarray]) -> tuple[float, float]:
        gap = float(np.abs(w["w"] - 2).sum())
        return gap, 1 / (1 + gap)

    strategy = make_strategy(
        tmp_path, ledger, run_id, min_nodes=5, model=MODEL, nodes=NODES,
        aggregator=build_aggregator(federation), evaluator=distance,
    )  # fmt: skip
    strategy.defences = Defences.of(federation)
    strategy.valuer = Valuer(Policy().valuation, seed=1)
    updates = [*HONEST, np.full(4, 2.5, np.float32)]
    replies = [
        sealed_reply(node, name, {"w": w}, 100, model=MODEL)
        for node, name, w in zip(NODES, NAMES, updates, strict=True)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    strategy.finish_round(1, arrays)
    assert [name for name, _, _ in strategy.round_updates()] == list(NAMES)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
        (valued,) = contributions_report(s)
    assert [r["round"] for r in run["rounds"]] == [1]
    (values,) = [r["values_ppm"] for r in valued["rounds"]]
    assert sorted(values) == sorted(NAMES)
    assert verify_ledger(ledger).rows_checked > 0
    ledger.close()


# -- the norm bound -------------------------------------------------------------------


def test_a_fixed_bound_clips_only_longer_updates_to_exactly_the_bound() -> None:
    bound = NormBound(5.0)
    short, long = {"w": np.array([3.0, 0.0], np.float32)}, {"w": np.array([30.0, 40.0], np.float32)}
    zero = {"w": np.zeros(2, np.float32)}
    (kept, clipped), (fact,) = bound.apply(zero, [("a", short), ("b", long)])
    assert kept is short
    np.testing.assert_allclose(clipped["w"], [3.0, 4.0])
    assert (fact.institution, fact.norm_before, fact.norm_after) == ("b", 50.0, 5.0)
    assert fact.detail == "update norm 50 clipped to 5 (the policy's fixed bound)"


def test_an_adaptive_bound_is_the_quantile_of_the_rounds_norms() -> None:
    base = {"w": np.ones(1, np.float32)}
    updates = [
        (f"n{i}", {"w": np.array([1.0 + norm], np.float32)})
        for i, norm in enumerate([1, 2, 3, 4, 1000])
    ]
    clipped, facts = NormBound("adaptive", 0.5).apply(base, updates)
    assert [f.institution for f in facts] == ["n3", "n4"]  # above the median norm, 3
    np.testing.assert_allclose([c["w"][0] - 1.0 for c in clipped], [1, 2, 3, 3, 3])
    assert facts[1].norm_before == pytest.approx(1000.0) and facts[1].norm_after == 3.0
    assert "adaptive: the 0.5 quantile of this round's 5 norms" in facts[1].detail
    off_arrays, off_facts = NormBound("off").apply(base, updates)
    assert off_facts == [] and off_arrays == [u for _, u in updates]


def test_a_scaled_update_is_bounded_by_default_and_the_ledger_says_by_how_much(
    tmp_path: Path,
) -> None:
    """The attack from the issue: one update scaled x1000, with the default defences."""
    attack = HONEST[0] * 1000
    federation = _federation()
    assert federation.update_norm_bound == "adaptive"
    result, defences = _run(tmp_path, federation, attack)
    norms = sorted(float(np.linalg.norm(w)) for w in [*HONEST, attack])
    bound = norms[2]  # the median of five norms
    (clip,) = [d for d in defences if d["institution"] == "i1"]
    assert (clip["rule"], clip["action"]) == ("norm-bound", "clipped")
    assert clip["norm_before"] == pytest.approx(norms[-1], rel=1e-6)
    assert clip["norm_after"] == pytest.approx(bound, rel=1e-6)
    assert float(np.linalg.norm(result)) <= bound + 1e-4  # one average of bounded updates
    assert float(np.linalg.norm(result)) < 10


def test_rule_effects_of_fedavg_are_none() -> None:
    assert rule_effects(_federation(), ["a"], [], []) == []


# -- combinations the policy refuses ------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"aggregator": "krum", "byzantine": 2, "min-nodes": 6}, "needs min-nodes >= 7, got 6"),
        ({"aggregator": "multi-krum", "byzantine": 1, "min-nodes": 4}, "min-nodes >= 5, got 4"),
        ({"aggregator": "bulyan", "byzantine": 1, "min-nodes": 6}, "min-nodes >= 7, got 6"),
        (
            {"aggregator": "trimmed-mean", "byzantine": 2, "min-nodes": 5},
            "cuts 1 of 5 updates at each end, fewer than the 2 declared attacker(s)",
        ),
        ({"byzantine": 1}, "fedavg tolerates no attacker"),
        (
            {"aggregator": "median", "server-momentum": 0.9},
            "apply to fedavg only, not to 'median'",
        ),
        ({"update-norm-bound": "huge"}, 'must be a number > 0, "adaptive", "reference" or "off"'),
        ({"update-norm-bound": -1.0}, 'must be a number > 0, "adaptive", "reference" or "off"'),
        ({"update-norm-quantile": 0.0}, "must be a number in (0, 1]"),
        ({"aggregator": "mean"}, "must be one of: fedavg, trimmed-mean, median"),
    ],
)
def test_invalid_robustness_settings_are_refused_when_the_policy_is_read(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(PolicyError) as refused:
        Policy.from_sections({"federation": values})
    assert message in str(refused.value)


def test_a_number_bound_survives_the_run_config() -> None:
    policy = Policy.from_sections({"federation": {"update-norm-bound": 2}})
    assert policy.to_run_config()["federation.update-norm-bound"] == 2.0
    assert Policy.from_run_config(policy.to_run_config()) == policy


# -- every update attack against the default defences -----------------------------------


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_is_rejected_or_bounded_and_the_others_still_count(
    tmp_path: Path, name: str
) -> None:
    """One authentic attacker (i1) among five, default defences, real sealed envelopes."""
    rng = np.random.default_rng(7)
    model = {"w": rng.normal(0, 1, 64).astype(np.float32)}
    honest = [{"w": model["w"] + rng.normal(0, 0.1, 64).astype(np.float32)} for _ in NAMES]
    sent, claimed = ATTACKS[name](model, honest[-1], 100, rng)
    ledger, run_id = ledger_with_run(tmp_path, NAMES)
    strategy = make_strategy(
        tmp_path, ledger, run_id, min_nodes=4, model=model, nodes=NODES, records=RECORDS
    )
    strategy.defences = Defences.of(_federation())
    replies = [
        sealed_reply(node, inst, w, 100, model=model)
        for node, inst, w in zip(NODES[:-1], NAMES[:-1], honest[:-1], strict=True)
    ] + [sealed_reply(NODES[-1], "i1", sent, claimed, model=model)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert verify_ledger(ledger).rows_checked > 0
    ledger.close()
    charged = sorted(c["institution"] for c in run["privacy_charges"])
    assert set(NAMES[:-1]) <= set(charged)  # the honest four always count
    deltas = [h["w"] - model["w"] for h in honest[:-1]]
    bound = float(np.median([np.linalg.norm(d) for d in [*deltas, sent["w"] - model["w"]]]))
    moved = arrays_of(arrays)["w"] - model["w"]
    if name == "inflated-examples":  # rejected, with its reason
        (exclusion,) = run["exclusions"]
        assert exclusion["reason"].startswith("update rejected (inflated-claim)")
        assert "i1" not in charged
        clipped, _ = NormBound("adaptive").apply(
            model, list(zip(NAMES[:-1], honest[:-1], strict=True))
        )
        expected = np.mean([c["w"] - model["w"] for c in clipped], axis=0)  # the four, bounded
        np.testing.assert_allclose(moved, expected, atol=1e-5)
        return
    attack_norm = float(np.linalg.norm(sent["w"] - model["w"]))
    clips = [d for d in run["defences"] if d["institution"] == "i1"]
    if attack_norm > bound:  # bounded, with its norms in the ledger
        (clip,) = clips
        assert clip["norm_before"] == pytest.approx(attack_norm, rel=1e-5)
        assert clip["norm_after"] == pytest.approx(bound, rel=1e-5)
    # whatever it sent, one of five updates of at most the bound moves the model little
    assert float(np.linalg.norm(moved - np.mean(deltas, axis=0))) <= bound / 5 * 2 + 1e-4


# -- the data attack: label flipping, trained for real ----------------------------------


def test_a_label_flipping_participant_is_accepted_as_authentic_and_bounded_by_default(
    tmp_path: Path,
) -> None:
    """i1 trains with DP on mirrored labels: a real, sealed update the gate cannot refuse.

    The default defences bound it like every update: each norm above the
    round's median is clipped to it, with both norms in the ledger, and then
    rescaled to the reference update's norm by the trust weighting.
    """
    policy = Policy().with_overrides({"federation.rounds": 1, "training.local-epochs": 1})
    institutions = [(name, "academia") for name in NAMES]
    honest = prepare_data(tmp_path / "clean", policy, institutions)
    ledger, run_id = ledger_with_run(tmp_path, NAMES)
    recorder = LedgerRecorder(
        ledger, run_id, flower_run_id=str(FLOWER_RUN), snapshot_dir=tmp_path / "snap"
    )
    federation = HostileFederation(
        policy, tmp_path / "work", institutions, attacker="i1", attack=LABEL_FLIP, recorder=recorder
    )
    attacker = federation.setups[-1]
    original = load_local_data(policy, honest.nodes[-1].data_dir)
    assert isinstance(attacker.data, ImageData) and isinstance(original, ImageData)
    assert (attacker.data.labels == 9 - original.labels).all()  # what it trains on
    before = federation.weights
    federation.round(1)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert verify_ledger(ledger).rows_checked > 0
    ledger.close()
    assert run["exclusions"] == []
    assert sorted(c["institution"] for c in run["privacy_charges"]) == sorted(NAMES)
    clips = [d for d in run["defences"] if d["action"] == "clipped"]
    assert len(clips) == 2  # of five distinct norms, the two above the median
    (bound,) = {d["norm_after"] for d in clips}
    assert all(d["norm_before"] > bound for d in clips)
    moved = np.linalg.norm(
        np.concatenate([(federation.weights[k] - before[k]).ravel() for k in before])
    )
    # then trust rescales each to the reference's norm: the mean moves at most that far
    (reference,) = {d["norm_after"] for d in run["defences"] if d["rule"] == "trust"}
    assert 0 < moved <= reference * (1 + 1e-5)

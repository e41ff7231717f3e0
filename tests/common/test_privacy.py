"""DP-SGD and privacy accounting against ground truth: values, not shapes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import client.task
from client.accountant import (
    AccountantHistory,
    BudgetExhausted,
    PrivacyStateError,
    history_path,
    list_histories,
    locked_history,
)
from client.task import ClientSetup, train_round
from common.dp import DPPlan, PlanExceedsBudget, PrivacyError, epsilon_of, plan_round
from common.images import write_npz
from common.model import DigitsCNN, build_model, get_arrays
from common.policy import Policy, PrivacyConfig, TrainingConfig
from common.protocol import TrainConfig
from common.training import train, train_private
from fedcommons.partition import load_digits_data

RECORDS = 200  # 200 records, batch 32: 7 Poisson batches per epoch


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_npz(tmp_path / "data" / "digits.npz", load_digits_data().subset(np.arange(RECORDS)))
    return tmp_path / "data"


def _setup(data_dir: Path, *, institution: str = "uni-a", **privacy: Any) -> ClientSetup:
    privacy.setdefault("accountant", "rdp")  # the tests below pin RDP's own figures
    policy = Policy.from_sections(
        {
            "federation": {"rounds": 3},
            "training": {"local-epochs": 1, "batch-size": 32},
            "privacy": {key.replace("_", "-"): value for key, value in privacy.items()},
        }
    )
    node = {
        "institution": institution,
        "data-dir": str(data_dir),
        "state-dir": str(data_dir.parent / "state"),
    }
    return ClientSetup.from_configs(policy.to_run_config(), node)


def _start(setup: ClientSetup) -> dict[str, np.ndarray]:
    return get_arrays(build_model(setup.policy.model, setup.policy.federation.seed))


# -- accounting ---------------------------------------------------------------


def test_epsilon_without_subsampling_matches_the_gaussian_rdp_closed_form() -> None:
    # With sample rate 1 the Gaussian mechanism's RDP is T * a / (2 sigma^2) at order a;
    # Opacus converts RDP to (eps, delta) with Balle et al. (2020), over its default orders.
    sigma, steps, delta = 2.0, 10, 1e-5
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), float)
    rdp = steps * orders / (2 * sigma**2)
    expected = np.min(
        rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    )
    assert epsilon_of([(sigma, 1.0, steps)], delta, "rdp") == pytest.approx(expected, rel=1e-12)


def test_epsilon_for_fixed_sigma_rate_and_steps_is_pinned() -> None:
    # sigma 1.0, q 0.01, 1000 steps, delta 1e-5 (Opacus 1.6 accountants)
    rdp = epsilon_of([(1.0, 0.01, 1000)], 1e-5, "rdp")
    prv = epsilon_of([(1.0, 0.01, 1000)], 1e-5, "prv")
    assert rdp == pytest.approx(2.10137, abs=1e-4)
    assert prv == pytest.approx(1.83837, abs=1e-3)
    assert prv < rdp  # PRV is the tighter accountant
    assert epsilon_of([], 1e-5, "rdp") == 0.0


def test_prv_is_cross_checked_against_rdp_on_the_demo_settings() -> None:
    """The default accountant is PRV only because it checks out against RDP here.

    The demo's CNN node (university-a): 331 records, the default batch 256
    (q = 1/2) and 4 local epochs, so 8 steps a round and 64 over 8 rounds;
    delta 1e-5. Pinned values: Opacus 1.6.
    """
    assert PrivacyConfig().accountant == "prv"
    training = TrainingConfig()
    assert (training.batch_size, training.local_epochs) == (256, 4)
    noise = {}
    for accountant in ("rdp", "prv"):
        privacy = PrivacyConfig(epsilon=8.0, accountant=accountant)
        plan = plan_round(privacy, training, num_records=331, rounds_left=8)
        assert plan.sample_rate == pytest.approx(1 / 2) and plan.steps == 8
        noise[accountant] = plan.noise_multiplier
    assert noise["rdp"] == pytest.approx(2.7025, abs=3e-3)
    assert noise["prv"] == pytest.approx(2.5409, abs=3e-3)
    assert noise["prv"] < noise["rdp"]  # the same budget buys less noise
    for sigma in (noise["rdp"], noise["prv"], 1.0, 5.0):
        history = [(sigma, 1 / 2, 64)]
        assert epsilon_of(history, 1e-5, "prv") <= epsilon_of(history, 1e-5, "rdp")
    # what RDP calls epsilon 8 is 7.39 by PRV (and by dp-accounting's PLD: BENCHMARKS.md)
    assert epsilon_of([(noise["rdp"], 1 / 2, 64)], 1e-5, "prv") == pytest.approx(7.395, abs=0.02)


def test_persisted_history_equals_one_accountant_over_all_rounds(data_dir: Path) -> None:
    setup = _setup(data_dir, noise_multiplier=1.0)
    weights = _start(setup)
    charges = []
    for server_round in (1, 2, 3):
        outcome = train_round(setup, weights, TrainConfig(server_round))
        weights = outcome.weights
        charges.append(outcome.charge.epsilon)
    # one accountant that saw all 3 rounds x 7 steps at once
    whole = RDPAccountant()
    whole.history = [(1.0, 1 / 7, 21)]
    assert charges[-1] == pytest.approx(whole.get_epsilon(delta=1e-5), rel=1e-12)
    assert charges[0] < charges[1] < charges[2]
    # a fresh engine per round (Flower's Opacus example) reports one round's epsilon
    # every round, forever: the first round's figure, well below the truth after three
    fresh = RDPAccountant()
    fresh.history = [(1.0, 1 / 7, 7)]
    assert fresh.get_epsilon(delta=1e-5) == pytest.approx(charges[0], rel=1e-12)
    assert fresh.get_epsilon(delta=1e-5) < 0.75 * charges[-1]
    (state,) = list_histories(data_dir.parent / "state")
    assert state.steps == 21 and state.history == [(1.0, 1 / 7, 21)]


def test_history_accumulates_across_runs_and_accountants_agree(data_dir: Path) -> None:
    first = train_round(
        _setup(data_dir, noise_multiplier=1.5), _start(_setup(data_dir)), TrainConfig(1)
    )
    setup = _setup(data_dir, noise_multiplier=1.5, accountant="prv")
    second = train_round(setup, _start(setup), TrainConfig(1))  # a second run, another accountant
    history = [(1.5, 1 / 7, 7), (1.5, 1 / 7, 7)]
    assert second.charge.epsilon == pytest.approx(epsilon_of(history, 1e-5, "prv"))
    assert second.charge.epsilon > first.charge.epsilon
    assert second.charge.accountant == "prv"


def test_derived_noise_spends_exactly_the_budget_over_the_planned_rounds() -> None:
    training = TrainingConfig(local_epochs=2, batch_size=32)
    for accountant in ("prv", "rdp"):
        privacy = PrivacyConfig(epsilon=3.0, accountant=accountant)
        plan = plan_round(privacy, training, num_records=420, rounds_left=8)
        assert plan.sample_rate == pytest.approx(1 / 14) and plan.steps == 28
        spent = epsilon_of([(plan.noise_multiplier, plan.sample_rate, 8 * 28)], 1e-5, accountant)
        assert 3.0 - 0.01 <= spent <= 3.0
    explicit = plan_round(
        PrivacyConfig(noise_multiplier=1.2), training, num_records=420, rounds_left=8
    )
    assert explicit.noise_multiplier == 1.2  # used as it is, once the plan fits (ε < 8)
    with pytest.raises(PlanExceedsBudget, match="would bring epsilon to at least 17"):
        plan_round(
            PrivacyConfig(noise_multiplier=0.7, accountant="rdp"),
            training,
            num_records=420,
            rounds_left=8,
        )
    # half-way through, what is left is planned for the rounds left: the same noise
    half = [(plan.noise_multiplier, plan.sample_rate, 4 * 28)]
    rest = plan_round(privacy, training, num_records=420, rounds_left=4, history=half)
    assert rest.noise_multiplier == pytest.approx(plan.noise_multiplier, rel=0.01)


# -- DP-SGD against plain SGD -------------------------------------------------


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_no_noise_and_no_clipping_equals_one_plain_sgd_step(mode: str) -> None:
    torch.manual_seed(0)
    images, labels = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    dataset = TensorDataset(images, labels)
    plain, private = DigitsCNN(), DigitsCNN()
    private.load_state_dict(plain.state_dict())
    # sample rate 1: Poisson sampling keeps every record, so both see the same batch
    train(plain, DataLoader(dataset, batch_size=16), torch.optim.SGD(plain.parameters(), 0.1), 1)
    _, history = train_private(
        private,
        DataLoader(dataset, batch_size=16),
        torch.optim.SGD(private.parameters(), 0.1),
        epochs=1,
        plan=DPPlan(noise_multiplier=0.0, sample_rate=1.0, steps=1),
        max_grad_norm=1e9,
        grad_sample_mode=mode,
        accountant="rdp",
        history=[],
    )
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(private.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert history == [(0.0, 1.0, 1)]


def test_clipping_bounds_each_example_s_influence() -> None:
    torch.manual_seed(0)
    dataset = TensorDataset(torch.rand(16, 1, 8, 8) * 50, torch.randint(0, 10, (16,)))
    model = DigitsCNN()
    before = [p.detach().clone() for p in model.parameters()]
    train_private(
        model,
        DataLoader(dataset, batch_size=16),
        torch.optim.SGD(model.parameters(), 1.0),
        epochs=1,
        plan=DPPlan(noise_multiplier=0.0, sample_rate=1.0, steps=1),
        max_grad_norm=0.01,
        grad_sample_mode="hooks",
        accountant="rdp",
        history=[],
    )
    moved = torch.sqrt(
        torch.stack(
            [((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)]
        ).sum()
    )
    # mean of 16 clipped per-sample gradients: norm at most 0.01, times lr 1.0
    assert float(moved) <= 0.01 + 1e-6


def test_batchnorm_model_is_rejected_with_a_clear_message() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))
    dataset = TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    with pytest.raises(PrivacyError, match=r"BatchNorm.*Replace BatchNorm with GroupNorm"):
        train_private(
            model,
            DataLoader(dataset, batch_size=4),
            torch.optim.SGD(model.parameters(), 0.1),
            epochs=1,
            plan=DPPlan(1.0, 0.5, 2),
            max_grad_norm=1.0,
            grad_sample_mode="hooks",
            accountant="rdp",
            history=[],
        )


# -- enforcement --------------------------------------------------------------


def test_refusal_happens_before_any_model_or_gradient(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = _setup(data_dir, epsilon=0.5, noise_multiplier=0.8)
    start = _start(setup)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built or trained after the budget check failed")

    monkeypatch.setattr(client.task, "build_model", forbidden)
    monkeypatch.setattr(client.task, "train_private", forbidden)
    with pytest.raises(
        BudgetExhausted, match=r"uni-a .*over the budget of 0\.500 \(spent so far: 0\.000\)"
    ):
        train_round(setup, start, TrainConfig(1))
    assert not history_path(data_dir.parent / "state", setup.data.sha256()).exists()


def test_a_second_run_plans_from_what_is_left_and_finishes_within_the_budget(
    data_dir: Path,
) -> None:
    setup = _setup(data_dir, epsilon=2.0)
    weights = _start(setup)
    path = history_path(data_dir.parent / "state", setup.data.sha256())

    def history() -> list[tuple[float, float, int]]:
        return [(float(s), float(q), int(n)) for s, q, n in json.loads(path.read_text())["history"]]

    first_run = [train_round(setup, weights, TrainConfig(r), flower_run_id=1) for r in (1, 2)]
    cut = first_run[-1].charge  # 2 of 3 planned rounds: the run was cut short
    # the first run's noise was planned for all 3 rounds: the round it never ran
    # would have spent the rest of the budget
    never_ran = (cut.noise_multiplier, cut.sample_rate, cut.steps)
    assert epsilon_of([*history(), never_ran], 1e-5, "rdp") == pytest.approx(2.0, rel=1e-3)
    second_run = [train_round(setup, weights, TrainConfig(r), flower_run_id=2) for r in (1, 2, 3)]
    sigmas = {o.charge.noise_multiplier for o in second_run}
    assert len(sigmas) == 1 and sigmas.pop() > first_run[0].charge.noise_multiplier
    final = second_run[-1].charge.epsilon
    assert final == pytest.approx(2.0, rel=1e-3)  # the whole plan fits what was left, and spends it
    assert epsilon_of(history(), 1e-5, "rdp") == pytest.approx(final)


def test_a_plan_that_cannot_fit_is_refused_before_any_training(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import client.task

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("training must not start for a plan that cannot fit")

    setup = _setup(data_dir, epsilon=2.0)
    weights = _start(setup)
    for server_round in (1, 2, 3):
        weights = train_round(setup, weights, TrainConfig(server_round), flower_run_id=1).weights
    path = history_path(data_dir.parent / "state", setup.data.sha256())
    saved = path.read_bytes()
    monkeypatch.setattr(client.task, "train_private", forbidden)
    # a later policy with a smaller budget: already spent, whatever the noise
    smaller = _setup(data_dir, epsilon=1.5)
    spent = r"the 3 round.* over the budget of 1\.500 \(spent so far: (1\.9\d\d|2\.000), already"
    with pytest.raises(BudgetExhausted, match=spent):
        train_round(smaller, weights, TrainConfig(1), flower_run_id=2)
    # an explicit noise multiplier too small for what is left
    fixed = _setup(data_dir, epsilon=2.5, noise_multiplier=0.5)
    with pytest.raises(
        BudgetExhausted, match=r"over the budget of 2\.500 .*; nothing was trained$"
    ) as caught:
        train_round(fixed, weights, TrainConfig(1), flower_run_id=3)
    assert caught.value.next_epsilon > 2.5
    assert path.read_bytes() == saved  # a refusal charges nothing


def test_delta_at_or_above_one_over_n_is_refused(data_dir: Path) -> None:
    with pytest.raises(PrivacyError, match=r"privacy.delta = 0.005 must be below 1/N = 0.005 "):
        train_round(_setup(data_dir, delta=0.005), _start(_setup(data_dir)), TrainConfig(1))
    with pytest.raises(PrivacyError, match="N = 1000 records"):
        plan_round(PrivacyConfig(delta=0.002), TrainingConfig(), num_records=1000, rounds_left=1)


def test_unreachable_budget_is_a_clear_error() -> None:
    said = (
        r"^the 8 round\(s\) planned would bring epsilon to at least \d+\.\d{3}, "
        r"over the budget of 0\.001 \(spent so far: 0\.000\)$"
    )
    with pytest.raises(PlanExceedsBudget, match=said):
        plan_round(PrivacyConfig(epsilon=0.001), TrainingConfig(), num_records=300, rounds_left=8)


@pytest.mark.parametrize(
    ("spent", "said"),
    [(7.412, "spent so far: 7.412"), (8.25, "spent so far: 8.250, already over it")],
)
def test_a_refused_round_says_the_epsilon_it_would_reach_and_what_was_spent(
    spent: float, said: str
) -> None:
    refusal = BudgetExhausted(
        institution="uni-a", dataset_sha256="ab" * 32, spent=spent, budget=8.0, next_eps=8.693
    )
    assert str(refusal) == (
        "privacy budget exhausted for uni-a (dataset abababababab): this round would bring "
        f"epsilon to 8.693, over the budget of 8.000 ({said}); nothing was trained"
    )


# -- the history file ---------------------------------------------------------


def _charged_state(data_dir: Path) -> tuple[ClientSetup, Path]:
    setup = _setup(data_dir, noise_multiplier=1.0)
    train_round(setup, _start(setup), TrainConfig(1))
    return setup, history_path(data_dir.parent / "state", setup.data.sha256())


def test_history_is_json_with_a_checksum_not_pickle(data_dir: Path) -> None:
    setup, path = _charged_state(data_dir)
    doc = json.loads(path.read_text())
    assert doc["history"] == [[1.0, 1 / 7, 7]]
    assert doc["institution"] == "uni-a" and doc["dataset_sha256"] == setup.data.sha256()
    state = AccountantHistory.from_json(path.read_text(), str(path))
    assert doc["history_sha256"] == state.sha256 and len(state.sha256) == 64


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text[: len(text) // 2], "is not valid JSON"),
        (lambda text: text.replace('"history": [', '"history": [[1, 2, 3], '), "sample rate"),
        (lambda text: text.replace("[\n    [\n      1.0,", "[\n    [\n      9.0,"), "sha256"),
        (lambda text: text.replace('"version": 1', '"version": 7'), "history version 7"),
        (lambda text: "[]", "is not a FedCommons accountant history"),
        (lambda text: text.replace('"num_records": 200', '"num_records": "200"'), "wrong type"),
    ],
)
def test_corrupt_history_is_rejected_never_reset(data_dir: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    setup, path = _charged_state(data_dir)
    damaged = damage(path.read_text())
    path.write_text(damaged)
    with pytest.raises(PrivacyStateError, match=message):
        train_round(setup, _start(setup), TrainConfig(1))
    assert path.read_text() == damaged  # left for a person to look at, not overwritten


def test_foreign_history_file_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    _, path = _charged_state(data_dir)
    # another institution's file for the same dataset hash
    other = _setup(data_dir, institution="company-c", noise_multiplier=1.0)
    with pytest.raises(PrivacyStateError, match=r"belongs to 'uni-a'.*not to 'company-c'"):
        train_round(other, _start(other), TrainConfig(1))
    # a file copied in under another dataset's name
    smaller = tmp_path / "smaller"
    write_npz(smaller / "digits.npz", load_digits_data().subset(np.arange(150)))
    other_setup = _setup(smaller, noise_multiplier=1.0)
    target = history_path(smaller.parent / "state", other_setup.data.sha256())
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    with pytest.raises(PrivacyStateError, match="a foreign history file"):
        train_round(other_setup, _start(other_setup), TrainConfig(1))


def test_a_failed_round_writes_no_charge(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        locked_history(tmp_path, institution="u", dataset_sha256="a" * 64, num_records=10) as state,
    ):
        state.history.append((1.0, 0.5, 2))
        raise RuntimeError("boom")
    assert list_histories(tmp_path) == []


def test_derived_noise_is_computed_once_per_run_and_kept_with_the_history(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import common.dp

    calls: list[int] = []
    real = common.dp._noise_for_budget

    def counting(*args: Any) -> float:
        calls.append(args[-1])  # the rounds planned
        return real(*args)

    monkeypatch.setattr(common.dp, "_noise_for_budget", counting)
    setup = _setup(data_dir, epsilon=5.0)
    weights = _start(setup)
    first = train_round(setup, weights, TrainConfig(1), flower_run_id=1).charge
    second = train_round(setup, weights, TrainConfig(2), flower_run_id=1).charge
    assert calls == [3]  # derived in round 1 for the 3 rounds planned, looked up in round 2
    assert first.noise_multiplier == second.noise_multiplier
    path = history_path(data_dir.parent / "state", setup.data.sha256())
    (sigma,) = json.loads(path.read_text())["derived_noise"].values()
    assert sigma == first.noise_multiplier
    train_round(setup, weights, TrainConfig(3), flower_run_id=2)  # a resumed run plans again
    assert calls == [3, 1]

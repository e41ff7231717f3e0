"""The client's own side: node config, local data and one training round."""

from pathlib import Path

import numpy as np
import pytest

from client.task import ClientSetup, evaluate_global, train_round
from common.images import DataError, ImageData, write_npz
from common.model import build_model, get_arrays
from common.policy import Policy, PolicyError
from common.protocol import NodeConfigError, TrainConfig
from fedcommons.partition import load_digits_data


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_npz(tmp_path / "data" / "digits.npz", load_digits_data().subset(np.arange(200)))
    return tmp_path / "data"


def _node(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "institution": "uni-a",
        "data-dir": str(data_dir),
        "state-dir": str(data_dir.parent / "state"),
        **extra,
    }


def test_setup_reads_only_the_node_s_own_folder(data_dir: Path) -> None:
    setup = ClientSetup.from_configs(Policy().to_run_config(), _node(data_dir))
    assert setup.institution == "uni-a"
    assert setup.state_dir == data_dir.parent / "state"
    assert len(setup.data) == 200
    assert isinstance(setup.data, ImageData)
    assert setup.data.source == str(data_dir / "digits.npz")


@pytest.mark.parametrize(
    "node_config", [{}, {"institution": "uni-a"}, {"institution": "", "data-dir": "x"}]
)
def test_incomplete_node_config_is_named(node_config: dict[str, str]) -> None:
    with pytest.raises(NodeConfigError, match="SuperNode node config needs"):
        ClientSetup.from_configs(Policy().to_run_config(), node_config)


def test_bad_local_data_fails_before_training(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8)), labels=np.array([0, 1, 12]))
    with pytest.raises(DataError, match="label 12 at index 2 is out of range"):
        ClientSetup.from_configs(
            Policy().to_run_config(),
            {"institution": "u", "data-dir": str(tmp_path), "state-dir": str(tmp_path)},
        )


def test_dp_needs_a_state_folder_but_dp_off_does_not(data_dir: Path) -> None:
    node = {"institution": "u", "data-dir": str(data_dir)}
    with pytest.raises(PolicyError, match=r'needs state-dir="..." .*privacy accountant'):
        ClientSetup.from_configs(Policy().to_run_config(), node)
    off = Policy.from_sections({"privacy": {"dp": False}})
    assert ClientSetup.from_configs(off.to_run_config(), node).state_dir is None


def test_train_round_without_dp_moves_the_weights_and_is_reproducible(data_dir: Path) -> None:
    policy = Policy.from_sections({"privacy": {"dp": False}})
    setup = ClientSetup.from_configs(policy.to_run_config(), _node(data_dir))
    start = get_arrays(build_model(policy.model, policy.federation.seed))
    before = evaluate_global(setup, start)
    outcome = train_round(setup, start, TrainConfig(1))
    weights = outcome.weights
    after = evaluate_global(setup, weights)
    assert outcome.result.num_examples == policy.training.local_epochs * 200
    assert after.loss < before.loss
    assert set(weights) == set(start)
    assert any(not np.array_equal(weights[k], start[k]) for k in start)
    assert outcome.charge.dp is False and outcome.charge.epsilon == float("inf")
    assert not (data_dir.parent / "state").exists()  # nothing charged, nothing stored
    # the same round on the same data is reproducible
    again = train_round(setup, start, TrainConfig(1)).weights
    assert all(np.array_equal(weights[k], again[k]) for k in start)


def test_dp_round_learns_keeps_plain_keys_and_charges_the_budget(data_dir: Path) -> None:
    policy = Policy.from_sections(
        {"federation": {"rounds": 2}, "training": {"batch-size": 32, "learning-rate": 0.3}}
    )
    setup = ClientSetup.from_configs(policy.to_run_config(), _node(data_dir))
    start = get_arrays(build_model(policy.model, policy.federation.seed))
    outcome = train_round(setup, start, TrainConfig(1))
    assert set(outcome.weights) == set(start)  # no "_module." prefix on the wire
    assert evaluate_global(setup, outcome.weights).loss < evaluate_global(setup, start).loss
    charge = outcome.charge
    assert charge.dp and charge.accountant == "prv" and charge.delta == 1e-5
    assert charge.sample_rate == pytest.approx(1 / 7)  # 200 records, batch 32: 7 batches
    assert charge.steps == 28  # 4 local epochs x 7 Poisson batches
    # the derived noise spends about half the budget in the first of two rounds
    assert 2.0 < charge.epsilon < 8.0
    assert charge.dataset_sha256 == setup.data.sha256()


def test_training_device_is_checked_on_the_node() -> None:
    import torch

    from common.training import DeviceError, resolve_device

    has_gpu = torch.cuda.is_available()
    assert resolve_device("auto").type == ("cuda" if has_gpu else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if has_gpu:
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(DeviceError, match=r'training\.device = "cuda" but this node has no'):
            resolve_device("cuda")
    with pytest.raises(PolicyError, match=r"'training\.device' must be one of: auto, cpu, cuda"):
        Policy.from_sections({"training": {"device": "tpu"}})

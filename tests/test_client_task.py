"""The client's own side: node config, local data and one training round."""

from pathlib import Path

import numpy as np
import pytest

from client.task import ClientSetup, evaluate_global, train_round
from common.data import DataError, load_digits_data, write_npz
from common.model import build_model, get_arrays
from common.policy import Policy, PolicyError


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_npz(tmp_path / "data" / "digits.npz", load_digits_data().subset(np.arange(200)))
    return tmp_path / "data"


def test_setup_reads_only_the_node_s_own_folder(data_dir: Path) -> None:
    setup = ClientSetup.from_configs(
        Policy().to_run_config(), {"institution": "uni-a", "data-dir": str(data_dir)}
    )
    assert setup.institution == "uni-a"
    assert len(setup.data) == 200
    assert setup.data.source == str(data_dir / "digits.npz")


@pytest.mark.parametrize(
    "node_config", [{}, {"institution": "uni-a"}, {"institution": "", "data-dir": "x"}]
)
def test_incomplete_node_config_is_named(node_config: dict[str, str]) -> None:
    with pytest.raises(PolicyError, match="SuperNode node config needs"):
        ClientSetup.from_configs(Policy().to_run_config(), node_config)


def test_bad_local_data_fails_before_training(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8)), labels=np.array([0, 1, 12]))
    with pytest.raises(DataError, match="label 12 at index 2 is out of range"):
        ClientSetup.from_configs(
            Policy().to_run_config(), {"institution": "u", "data-dir": str(tmp_path)}
        )


def test_train_round_moves_the_weights_and_improves_local_loss(data_dir: Path) -> None:
    policy = Policy()
    setup = ClientSetup.from_configs(
        policy.to_run_config(), {"institution": "u", "data-dir": str(data_dir)}
    )
    start = get_arrays(build_model(policy.model, policy.federation.seed))
    before = evaluate_global(setup, start)
    weights, result = train_round(setup, start, {"server-round": 1})
    after = evaluate_global(setup, weights)
    assert result.num_examples == policy.training.local_epochs * 200
    assert after.loss < before.loss
    assert set(weights) == set(start)
    assert any(not np.array_equal(weights[k], start[k]) for k in start)
    # the same round on the same data is reproducible
    again, _ = train_round(setup, start, {"server-round": 1})
    assert all(np.array_equal(weights[k], again[k]) for k in start)

import numpy as np
import pytest
import torch
from torch import nn

from common.arrays import arrays_sha256
from common.model import DigitsCNN, build_model, get_arrays, set_arrays
from common.policy import ModelConfig
from common.training import evaluate, local_sgd, make_loader, train
from fedcommons.partition import load_digits_data


def test_cnn_forward_gives_logits_per_class_and_gradients_everywhere() -> None:
    model = build_model(ModelConfig(), seed=0)
    logits = model(torch.zeros(5, 1, 8, 8))
    assert logits.shape == (5, 10)
    nn.CrossEntropyLoss()(model(torch.rand(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("channels", "hidden", "parameters"),
    [(16, 64, 38_378), (8, 32, 9_850), (8, 0, 3_866), (6, 0, 2_686)],
)
def test_cnn_width_is_set_by_the_policy_and_stays_opacus_compatible(
    channels: int, hidden: int, parameters: int
) -> None:
    model = build_model(ModelConfig(channels=channels, hidden=hidden), seed=0)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(model, strict=False) == []
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_channels % m.num_groups == 0 for m in norms)


def test_activation_is_set_by_the_policy() -> None:
    tanh = build_model(ModelConfig(activation="tanh"), seed=0)
    relu = build_model(ModelConfig(activation="relu"), seed=0)
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 2
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 2
    # Same seed, same weights: only the non-linearity differs, so outputs differ.
    x = torch.rand(2, 1, 8, 8)
    assert not torch.allclose(tanh(x), relu(x))
    with pytest.raises(ValueError, match="activation must be one of"):
        DigitsCNN(activation="gelu")


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = get_arrays(build_model(ModelConfig(), seed=5))
    assert torch.rand(1) == expected_next
    b = get_arrays(build_model(ModelConfig(), seed=5))
    c = get_arrays(build_model(ModelConfig(), seed=6))
    assert arrays_sha256(a) == arrays_sha256(b) != arrays_sha256(c)


def test_set_arrays_round_trips_and_rejects_mismatches() -> None:
    source, target = build_model(ModelConfig(), 1), build_model(ModelConfig(), 2)
    set_arrays(target, get_arrays(source))
    assert arrays_sha256(get_arrays(target)) == arrays_sha256(get_arrays(source))
    weights = get_arrays(source)
    weights["classifier.1.bias"] = np.zeros(3, np.float32)
    with pytest.raises(
        ValueError, match=r"'classifier.1.bias' has shape \(3,\), the model expects \(10,\)"
    ):
        set_arrays(target, weights)
    weights.pop("classifier.1.bias")
    with pytest.raises(ValueError, match=r"missing \['classifier.1.bias'\]"):
        set_arrays(target, weights)


def test_training_learns_digits_and_counts_examples_not_batches() -> None:
    data = load_digits_data()
    train_part, test_part = data.subset(np.arange(0, 1400)), data.subset(np.arange(1400, 1797))
    model = build_model(ModelConfig(), seed=0)
    before = evaluate(model, test_part)
    result = train(
        model, make_loader(train_part, 32, shuffle=True), local_sgd(model, 0.05, 0.9), epochs=3
    )
    after = evaluate(model, test_part)
    assert result.num_examples == 3 * 1400
    assert result.steps == 3 * 44  # ceil(1400 / 32) batches per epoch
    assert before.accuracy < 0.3
    assert after.accuracy > 0.9
    assert after.loss < before.loss
    assert after.num_examples == 397


def test_evaluate_matches_a_hand_computed_accuracy() -> None:
    data = load_digits_data().subset(np.arange(50))
    model = build_model(ModelConfig(), seed=0)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.images))
    expected = float((logits.argmax(1).numpy() == data.labels).mean())
    expected_loss = float(nn.CrossEntropyLoss()(logits, torch.from_numpy(data.labels)))
    result = evaluate(model, data, batch_size=7)
    assert result.accuracy == pytest.approx(expected)
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)


def test_plain_training_clips_the_batch_gradient_to_max_grad_norm() -> None:
    data = load_digits_data().subset(np.arange(32))
    model = build_model(ModelConfig(), seed=0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train(model, make_loader(data, 32, shuffle=False), optimizer, 1, max_grad_norm=0.01)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # One plain SGD step with lr 1 moves the weights by exactly the clipped gradient.
    assert float((after - before).norm()) == pytest.approx(0.01, rel=1e-4)

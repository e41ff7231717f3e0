"""Models and their weights as named NumPy arrays.

The CNN uses GroupNorm, never BatchNorm: BatchNorm mixes examples within a
batch, which per-sample gradient clipping (Opacus DP-SGD) cannot allow.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.arrays import Arrays, arrays_sha256
from common.policy import ModelConfig

__all__ = [
    "DigitsCNN",
    "build_model",
    "frozen_sha256",
    "full_arrays",
    "get_arrays",
    "set_arrays",
]


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks with GroupNorm, then a dense classifier.

    Parameters
    ----------
    num_classes : int (default: 10)
    image_size : int (default: 8)
        Height and width of the square grey-scale input.
    channels : int (default: 16)
        Channels of the first convolution; the second has ``2 * channels``.
    hidden : int (default: 64)
        Units of the hidden dense layer; 0 maps features straight to classes.
    activation : str (default: "relu")
        ``"relu"`` or ``"tanh"``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 8,
        channels: int = 16,
        hidden: int = 64,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if channels < 1 or hidden < 0:
            raise ValueError(f"channels must be >= 1 and hidden >= 0, got {channels}, {hidden}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        act = _ACTIVATIONS[activation]
        wide = 2 * channels
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            act(),
            nn.Conv2d(channels, wide, 3, padding=1),
            nn.GroupNorm(_groups(wide), wide),
            act(),
            nn.MaxPool2d(2),
        )
        flat = wide * (image_size // 2) ** 2
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden), act(), nn.Linear(hidden, num_classes)]
        else:
            head += [nn.Linear(flat, num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _groups(channels: int) -> int:
    """GroupNorm groups: about four channels a group, dividing ``channels`` exactly."""
    groups = max(channels // 4, 1)
    while channels % groups:
        groups -= 1
    return groups


def build_model(config: ModelConfig, seed: int) -> nn.Module:
    """Build the policy's model with weights that depend only on ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if config.name == "cnn":
            return DigitsCNN(
                config.num_classes,
                config.image_size,
                config.channels,
                config.hidden,
                config.activation,
            )
        if config.name == "bert":
            from common.bert import build_bert

            return build_bert(config)
        raise ValueError(f"unknown model {config.name!r}")
    finally:
        torch.random.set_rng_state(generator_state)


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def get_arrays(model: nn.Module) -> Arrays:
    """The model's *trainable* parameters as ``{name: ndarray}`` (copies, on the CPU).

    This is what travels between server and clients. For the CNN it is the
    whole state; for BERT only the unfrozen part (see :func:`frozen_sha256`).
    """
    return {k: v.detach().cpu().numpy().copy() for k, v in _trainable(model).items()}


def set_arrays(model: nn.Module, arrays: Arrays) -> None:
    """Load ``arrays`` into the trainable parameters; names, shapes and dtypes must match."""
    state = _trainable(model)
    if set(arrays) != set(state):
        missing = sorted(set(state) - set(arrays))
        extra = sorted(set(arrays) - set(state))
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {extra}")
    for name, value in arrays.items():
        expected = state[name]
        if tuple(value.shape) != tuple(expected.shape):
            raise ValueError(
                f"weight {name!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected.shape)}"
            )
        if str(np.asarray(value).dtype) != str(expected.dtype).removeprefix("torch."):
            raise ValueError(
                f"weight {name!r} has dtype {np.asarray(value).dtype}, "
                f"the model expects {expected.dtype}"
            )
    with torch.no_grad():
        for name, value in arrays.items():
            state[name].copy_(torch.from_numpy(np.asarray(value)))


def full_arrays(model: nn.Module) -> Arrays:
    """The whole state (trainable and frozen), as released or measured as ``model_bytes``."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def frozen_sha256(model: nn.Module) -> str:
    """SHA-256 of everything that does not travel: the base model's identity.

    Server and clients must hold the same frozen weights for the trainable
    part to mean the same thing; the ledger records this hash per run.
    """
    trainable = set(_trainable(model))
    frozen = {k: v for k, v in full_arrays(model).items() if k not in trainable}
    return arrays_sha256(frozen)

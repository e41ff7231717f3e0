"""Models and their weights as named NumPy arrays.

The CNN uses GroupNorm, never BatchNorm: BatchNorm mixes examples within a
batch, which per-sample gradient clipping (Opacus DP-SGD) cannot allow.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from safetensors.numpy import save as save_safetensors
from torch import nn

from common.policy import ModelConfig
from common.records import Arrays

__all__ = [
    "DigitsCNN",
    "arrays_sha256",
    "arrays_to_bytes",
    "build_model",
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
    """

    def __init__(
        self, num_classes: int = 10, image_size: int = 8, channels: int = 16, hidden: int = 64
    ) -> None:
        super().__init__()
        if channels < 1 or hidden < 0:
            raise ValueError(f"channels must be >= 1 and hidden >= 0, got {channels}, {hidden}")
        wide = 2 * channels
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.ReLU(),
            nn.Conv2d(channels, wide, 3, padding=1),
            nn.GroupNorm(_groups(wide), wide),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = wide * (image_size // 2) ** 2
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
        else:
            head += [nn.Linear(flat, num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


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
            return DigitsCNN(config.num_classes, config.image_size, config.channels, config.hidden)
        raise ValueError(f"unknown model {config.name!r}")
    finally:
        torch.random.set_rng_state(generator_state)


def get_arrays(model: nn.Module) -> Arrays:
    """The model's state as ``{name: ndarray}`` (copies, on the CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_arrays(model: nn.Module, arrays: Arrays) -> None:
    """Load ``arrays`` into ``model``; names, shapes and dtypes must match exactly."""
    state = model.state_dict()
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
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def arrays_to_bytes(arrays: Arrays) -> bytes:
    """Canonical safetensors serialisation (no pickle)."""
    return save_safetensors({k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())})


def arrays_sha256(arrays: Arrays) -> str:
    """SHA-256 of :func:`arrays_to_bytes`: the identity of a model or an update."""
    return hashlib.sha256(arrays_to_bytes(arrays)).hexdigest()

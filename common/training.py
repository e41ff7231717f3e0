"""Pure local training and evaluation, written for Opacus from the start.

``train`` takes a plain ``DataLoader`` and an optimizer built by the caller, so
``PrivacyEngine.make_private`` can wrap both without changes here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.data import ImageData

__all__ = ["EvalResult", "TrainResult", "evaluate", "local_sgd", "make_loader", "train"]


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss over all examples seen, and the number of steps."""

    loss: float
    steps: int
    num_examples: int


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


def make_loader(
    data: ImageData, batch_size: int, *, shuffle: bool, seed: int = 0
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A standard ``DataLoader`` over ``data`` (what Opacus expects to wrap)."""
    dataset = TensorDataset(torch.from_numpy(data.images), torch.from_numpy(data.labels))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def train(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    epochs: int,
) -> TrainResult:
    """Run ``epochs`` passes of cross-entropy training over ``loader``."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    total_loss, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        for images, labels in loader:
            if len(labels) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
            steps += 1
    return TrainResult(loss=total_loss / max(seen, 1), steps=steps, num_examples=seen)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, batch_size: int = 256) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for images, labels in make_loader(data, batch_size, shuffle=False):
        logits = model(images)
        total_loss += float(criterion(logits, labels))
        correct += int((logits.argmax(dim=1) == labels).sum())
    n = len(data)
    return EvalResult(loss=total_loss / n, accuracy=correct / n, num_examples=n)


def local_sgd(model: nn.Module, learning_rate: float, momentum: float) -> torch.optim.SGD:
    """The optimizer every client uses (kept in one place)."""
    return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)

"""Pure local training and evaluation, plain or with Opacus DP-SGD.

``train`` takes a plain ``DataLoader`` and an optimizer built by the caller;
``train_private`` hands the same objects to ``PrivacyEngine.make_private``
(Poisson sampling, ``wrap_model=False`` so the caller's module and its
state-dict keys are unchanged) with the accountant restored from the
dataset's persistent history, and returns the extended history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.dp import DPPlan, HistoryEntry, check_model_for_dp
from common.errors import UserError

__all__ = [
    "DeviceError",
    "EvalResult",
    "Examples",
    "TrainResult",
    "evaluate",
    "local_sgd",
    "make_loader",
    "resolve_device",
    "train",
    "train_private",
]

Loader = DataLoader[tuple[torch.Tensor, ...]]


class DeviceError(UserError, ValueError):
    """The policy asks for a device this node does not have."""


def resolve_device(name: str) -> torch.device:
    """``training.device`` on this node: ``auto`` is the GPU when there is one."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            'training.device = "cuda" but this node has no usable CUDA GPU (torch '
            f'{torch.__version__}); use "auto" to train on the GPU only where there is one'
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


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


class Examples(Protocol):
    """Data a model trains on: ``tensors()`` gives the model inputs, then the labels."""

    def __len__(self) -> int: ...

    def tensors(self) -> tuple[torch.Tensor, ...]: ...


def make_loader(
    data: Examples, batch_size: int, *, shuffle: bool, seed: int = 0
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A standard ``DataLoader`` over ``data`` (what Opacus expects to wrap)."""
    dataset = TensorDataset(*data.tensors())
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def train(
    model: nn.Module,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    *,
    max_grad_norm: float | None = None,
) -> TrainResult:
    """Run ``epochs`` passes of cross-entropy training over ``loader``.

    With ``max_grad_norm``, each batch gradient is scaled down to at most
    that L2 norm before the step (``clip_grad_norm_``), so a learning rate
    tuned for clipped DP-SGD stays stable without DP.
    """
    return _run_epochs(model, loader, optimizer, nn.CrossEntropyLoss(), epochs, max_grad_norm)


def _run_epochs(
    model: nn.Module,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], Any],
    epochs: int,
    max_grad_norm: float | None = None,
) -> TrainResult:
    model.train()
    device = _device_of(model)
    total_loss, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        for *batch, labels_here in loader:
            inputs = [x.to(device) for x in batch]
            labels = labels_here.to(device)
            # An empty Poisson batch still takes a (pure-noise) DP step: the
            # accountant charges it, so it is not skipped.
            optimizer.zero_grad()
            loss = criterion(model(*inputs), labels)
            loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            steps += 1
            if len(labels):
                total_loss += float(loss.item()) * len(labels)
                seen += len(labels)
    return TrainResult(loss=total_loss / max(seen, 1), steps=steps, num_examples=seen)


def train_private(
    model: nn.Module,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    plan: DPPlan,
    max_grad_norm: float,
    grad_sample_mode: str,
    accountant: str,
    history: Sequence[HistoryEntry],
) -> tuple[TrainResult, list[HistoryEntry]]:
    """DP-SGD for ``epochs`` epochs, charged to a restored accountant history.

    Parameters
    ----------
    model, loader, optimizer
        As for :func:`train`; ``loader`` is replaced by Opacus's Poisson sampler.
    epochs : int
        Local epochs.
    plan : DPPlan
        Noise multiplier, sample rate and steps fixed before training; a
        loader that would sample at another rate is an error.
    max_grad_norm : float
        Per-sample clipping bound.
    grad_sample_mode : str
        ``"hooks"`` or ``"ghost"`` (ghost clipping).
    accountant : str
        ``"rdp"`` or ``"prv"``.
    history : sequence of (float, float, int)
        The dataset's accountant history so far.

    Returns
    -------
    (TrainResult, list of (float, float, int))
        The training result and the history including this round's steps.
    """
    check_model_for_dp(model)
    engine = PrivacyEngine(accountant=accountant)
    engine.accountant.load_state_dict(
        {"history": list(history), "mechanism": engine.accountant.mechanism()}
    )
    criterion = nn.CrossEntropyLoss()
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=max_grad_norm,
        grad_sample_mode=grad_sample_mode,
        poisson_sampling=True,
        wrap_model=False,
    )
    if grad_sample_mode == "ghost":
        hooks, dp_optimizer, dp_criterion, dp_loader = private
    else:
        hooks, dp_optimizer, dp_loader = private
        dp_criterion = criterion
    try:
        if abs(1.0 / len(dp_loader) - plan.sample_rate) > 1e-12 or plan.steps != epochs * len(
            dp_loader
        ):
            raise RuntimeError(
                f"the planned sample rate {plan.sample_rate} and {plan.steps} steps do not match "
                f"the loader ({len(dp_loader)} batches x {epochs} epochs)"
            )
        result = _run_epochs(model, dp_loader, dp_optimizer, dp_criterion, epochs)
    finally:
        hooks.cleanup()
    return result, list(engine.accountant.history)


@torch.no_grad()
def evaluate(model: nn.Module, data: Examples, batch_size: int = 256) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    model.eval()
    device = _device_of(model)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for *batch, labels_here in make_loader(data, batch_size, shuffle=False):
        labels = labels_here.to(device)
        logits = model(*(x.to(device) for x in batch))
        total_loss += float(criterion(logits, labels))
        correct += int((logits.argmax(dim=1) == labels).sum())
    n = len(data)
    return EvalResult(loss=total_loss / n, accuracy=correct / n, num_examples=n)


def local_sgd(model: nn.Module, learning_rate: float, momentum: float) -> torch.optim.SGD:
    """The optimizer every client uses (kept in one place), over the trainable parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(trainable, lr=learning_rate, momentum=momentum)


@torch.no_grad()
def class_accuracy(
    model: nn.Module, data: Examples, num_classes: int, batch_size: int = 256
) -> np.ndarray:
    """Accuracy of ``model`` on each class of ``data`` (NaN for a class ``data`` lacks)."""
    model.eval()
    device = _device_of(model)
    hits, counts = np.zeros(num_classes), np.zeros(num_classes)
    for *batch, labels_here in make_loader(data, batch_size, shuffle=False):
        labels = labels_here.to(device)
        right = model(*(x.to(device) for x in batch)).argmax(dim=1) == labels
        np.add.at(counts, labels.cpu().numpy(), 1)
        np.add.at(hits, labels.cpu().numpy(), right.cpu().numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts

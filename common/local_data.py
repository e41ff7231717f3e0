"""One entry point for the policy's data, whichever model it trains.

The CNN reads images (``.npz`` or a PNG folder, :mod:`common.images`); BERT
reads labelled text (``.csv`` or ``.jsonl``, :mod:`common.text`) and
tokenizes it with the base model's tokenizer. Both give an object with
``labels``, ``sha256()`` (the dataset manifest hash) and, once prepared for
the model, ``tensors()``.
"""

from __future__ import annotations

from pathlib import Path

from common.images import ImageData, load_image_data
from common.policy import Policy
from common.text import TextData, load_text_data
from common.training import Examples

__all__ = ["LocalData", "data_suffix", "load_local_data", "server_split_path", "to_examples"]

LocalData = ImageData | TextData


def load_local_data(policy: Policy, path: str | Path) -> LocalData:
    """Read and validate a data file or folder for the policy's model."""
    if policy.model.name == "bert":
        return load_text_data(
            path,
            label_names=policy.data.label_names,
            text_column=policy.data.text_column,
            label_column=policy.data.label_column,
        )
    return load_image_data(
        path, num_classes=policy.model.num_classes, image_size=policy.model.image_size
    )


def data_suffix(policy: Policy) -> str:
    """The file type the policy's model reads: ``.jsonl`` text or ``.npz`` images."""
    return ".jsonl" if policy.model.name == "bert" else ".npz"


def server_split_path(policy: Policy, folder: str | Path, split: str) -> Path:
    """Where the operator keeps a held-out split (``validation`` or ``test``)."""
    return Path(folder) / f"{split}{data_suffix(policy)}"


def to_examples(policy: Policy, data: LocalData) -> Examples:
    """What the model trains on: images as they are, text tokenized to ``max-length``."""
    if isinstance(data, TextData):
        from common.bert import encode, load_tokenizer

        return encode(load_tokenizer(policy.model.base_model), data, policy.model.max_length)
    return data

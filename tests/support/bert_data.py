"""Eight labelled docstrings and the BERT model configuration the BERT tests train on.

Shared by the BERT tests and the encoder-cache tests; the checkpoint is the
``tiny_bert`` fixture's or the packaged MiniLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.policy import ModelConfig
from common.text import TextData

LABELS = ("networking", "mathematics", "concurrency")
TEXTS = (
    "Create a TCP connection to the given address and return the socket.",
    "Return the greatest common divisor of the integer arguments.",
    "A thread-safe queue that blocks until an item is available.",
    "Resolve a host name to a list of IPv4 addresses.",
    "Return the natural logarithm of x, or of x to the given base.",
    "Wait until the lock is released, then acquire it.",
    "Send the request line and headers to the HTTP server.",
    "Compute the median of the data, the middle value.",
)


def text_data() -> TextData:
    """The eight texts, labelled in turn with each of the three labels."""
    return TextData(TEXTS, np.array([0, 1, 2, 0, 1, 2, 0, 1]), LABELS)


def bert_config(checkpoint: Path | str, **kw: Any) -> ModelConfig:
    """A three-class BERT model on ``checkpoint``, texts cut at 24 tokens; ``kw`` adds to it."""
    return ModelConfig(name="bert", num_classes=3, base_model=str(checkpoint), max_length=24, **kw)

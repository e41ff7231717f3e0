"""Training only BERT's top, from a cache of what its frozen bottom makes of each text.

With ``model.train-layers = t`` the embeddings and the first ``k = L - t``
encoder layers never change, so their output for a text is the same every
epoch of every round. :func:`frozen_outputs` computes it once (layer ``k``'s
hidden states, as Hugging Face's ``output_hidden_states`` gives them);
:func:`top_view` is the same model from layer ``k`` up, sharing its
parameters, so training the view trains the model. The frozen part runs as
at inference in both paths (:class:`common.bert.TextClassifier` keeps it in
eval mode), so training from the cache equals training through the full
model, up to float rounding. LoRA adapts every layer: nothing is frozen
above the embeddings, and no cache is used.

Privacy is untouched: the same records are sampled the same way; only the
forward pass through layers that receive no gradient is skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from common.bert import (
    ArrayExamples,
    EncodedText,
    TextClassifier,
    encoder_layers,
    frozen_layers,
)

__all__ = ["FrozenOutputs", "frozen_layers", "frozen_outputs", "scoring_view", "top_view"]


@dataclass(frozen=True)
class FrozenOutputs(ArrayExamples):
    """Layer ``k``'s hidden states for every text: what the top trains on."""

    hidden: NDArray[np.float32]
    attention_mask: NDArray[np.int64]
    labels: NDArray[np.int64]


@torch.no_grad()
def frozen_outputs(
    model: TextClassifier, encoded: EncodedText, k: int, batch_size: int = 64
) -> FrozenOutputs:
    """Layer ``k``'s hidden states for every text of ``encoded`` (the frozen part, in eval mode).

    When every layer is frozen (``k`` = all of them) only the first token's
    state is kept: the pooler reads nothing else.
    """
    base: Any = model.hf.base_model
    was_training = base.training
    base.eval()
    keep_all = k < len(encoder_layers(model))
    device = next(base.parameters()).device
    chunks = []
    try:
        for start in range(0, len(encoded), batch_size):
            ids = torch.from_numpy(encoded.input_ids[start : start + batch_size]).to(device)
            mask = torch.from_numpy(encoded.attention_mask[start : start + batch_size]).to(device)
            states = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = states.hidden_states[k]
            kept = hidden if keep_all else hidden[:, :1]
            chunks.append(kept.cpu().numpy().astype(np.float32))
    finally:
        base.train(was_training)
    masks = encoded.attention_mask if keep_all else encoded.attention_mask[:, :1]
    return FrozenOutputs(np.concatenate(chunks), np.ascontiguousarray(masks), encoded.labels)


class _GivenStates(nn.Module):
    """Stands in for the embeddings: the hidden states arrive as ``inputs_embeds``."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if inputs_embeds is None:
            raise ValueError("the top of the model takes cached hidden states")
        return inputs_embeds


def _with(module: nn.Module, **children: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with some children replaced; the rest are shared."""
    clone = copy.copy(module)
    clone._modules = {**module._modules, **children}
    return clone


class _Top(nn.Module):
    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(inputs_embeds=hidden, attention_mask=attention_mask).logits  # type: ignore[no-any-return]


def top_view(model: TextClassifier, k: int) -> nn.Module:
    """``(hidden states of layer k, attention mask) -> logits``, sharing ``model``'s parameters.

    It is the model's own Hugging Face forward (attention mask, layers,
    pooler, classifier) with the embeddings replaced by the given states and
    the encoder cut to layers ``k`` and up.
    """
    hf: Any = model.hf
    prefix = str(hf.base_model_prefix)
    base: Any = getattr(hf, prefix)
    encoder = _with(base.encoder, layer=nn.ModuleList(list(base.encoder.layer)[k:]))
    top_base = _with(base, embeddings=_GivenStates(), encoder=encoder)
    return _Top(_with(hf, **{prefix: top_base}))


def scoring_view(model: nn.Module, examples: Any) -> tuple[nn.Module, Any]:
    """What to score ``model`` with on fixed ``examples``: its top on their frozen outputs.

    The server scores every round's model (and, for contribution values,
    every coalition's) on the same validation texts: their frozen outputs
    are computed once, and each score runs only the top. Anything else (the
    CNN, LoRA) is returned as it is.
    """
    if not isinstance(model, TextClassifier) or not isinstance(examples, EncodedText):
        return model, examples
    k = frozen_layers(model)
    if k == 0:
        return model, examples
    return top_view(model, k), frozen_outputs(model, examples, k)

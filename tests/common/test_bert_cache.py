"""Training BERT's top from cached frozen outputs equals training through the whole model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.bert import TextClassifier, encode, load_tokenizer
from common.bert_top import frozen_layers, frozen_outputs, top_view
from common.dp import DPPlan
from common.model import build_model, get_arrays
from common.training import Examples, local_sgd, make_loader, train, train_private
from tests.support.bert_data import LABELS, bert_config, text_data


def _model(tiny_bert: Path, train_layers: int, **kw: object) -> TextClassifier:
    model = build_model(bert_config(tiny_bert, train_layers=train_layers, **kw), seed=0)
    assert isinstance(model, TextClassifier)
    return model


def _fit(model: torch.nn.Module, examples: Examples, dp: bool) -> None:
    torch.manual_seed(7)  # the same Poisson batches and noise in both paths
    loader = make_loader(examples, 4, shuffle=False)
    optimizer = local_sgd(model, 0.5, 0.0)
    if not dp:
        train(model, loader, optimizer, 2, max_grad_norm=1.0)
        return
    steps = 2 * len(loader)
    plan = DPPlan(0.8, 1 / len(loader), steps)
    train_private(model, loader, optimizer, epochs=2, plan=plan, max_grad_norm=1.0,
                  grad_sample_mode="hooks", accountant="prv", history=[])  # fmt: skip


@pytest.mark.parametrize("train_layers", [0, 1])
@pytest.mark.parametrize("dp", [False, True])
def test_training_from_the_cache_equals_training_the_whole_model(
    tiny_bert: Path, train_layers: int, dp: bool
) -> None:
    encoded = encode(load_tokenizer(str(tiny_bert)), text_data(), 24)
    whole, cached = _model(tiny_bert, train_layers), _model(tiny_bert, train_layers)
    k = frozen_layers(cached)
    assert k == 2 - train_layers
    outputs = frozen_outputs(cached, encoded, k)
    # every layer frozen: only the first token's state is kept (the pooler reads no other)
    assert outputs.hidden.shape == ((8, 1, 32) if k == 2 else (8, 24, 32))
    _fit(whole, encoded, dp)
    _fit(top_view(cached, k), outputs, dp)
    before = get_arrays(_model(tiny_bert, train_layers))
    after_whole, after_cached = get_arrays(whole), get_arrays(cached)
    assert set(after_whole) == set(after_cached) == set(before)
    for name in after_whole:
        assert not np.array_equal(after_whole[name], before[name]) or "bias" in name
        np.testing.assert_allclose(after_cached[name], after_whole[name], rtol=1e-4, atol=1e-5)


def test_the_frozen_part_never_drops_out(tiny_bert: Path) -> None:
    model = _model(tiny_bert, 1)
    model.train()
    base: Any = model.hf.base_model
    assert not base.embeddings.training and not base.encoder.layer[0].training
    assert base.encoder.layer[1].training and base.pooler.training


def test_lora_adapts_every_layer_so_nothing_is_cached(tiny_bert: Path) -> None:
    assert frozen_layers(_model(tiny_bert, 0, lora_rank=2)) == 0


def _node_round(
    tiny_bert: Path, tmp_path: Path, state: str, cache: bool, server_round: int = 1
) -> dict[str, Any]:
    from client.task import ClientSetup, train_round
    from common.policy import Policy
    from common.protocol import TrainConfig
    from common.text import write_jsonl

    write_jsonl(tmp_path / "data" / "d.jsonl", text_data(), "text", "label")
    policy = Policy.from_sections(
        {
            "model": {"name": "bert", "num-classes": 3, "base-model": str(tiny_bert),
                      "train-layers": 1, "max-length": 24},
            "data": {"dataset": "stdlib-docs", "labels": ",".join(LABELS)},
            "federation": {"rounds": 3},
            "training": {"local-epochs": 2, "batch-size": 4},
        }
    )  # fmt: skip
    node = {"institution": "u", "data-dir": str(tmp_path / "data"),
            "state-dir": str(tmp_path / state), "encoder-cache": cache}  # fmt: skip
    setup = ClientSetup.from_configs(policy.to_run_config(), node)
    model = build_model(policy.model, policy.federation.seed)
    torch.manual_seed(11)  # the same Poisson batches and DP noise with and without the cache
    outcome = train_round(setup, get_arrays(model), TrainConfig(server_round, base_sha256=None))
    return {"weights": outcome.weights, "charge": outcome.charge, "setup": setup}


def test_a_node_trains_the_same_round_from_its_cache_kept_in_its_state_folder(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from client.encoder_cache import CACHE_DIR

    cached = _node_round(tiny_bert, tmp_path, "state-a", cache=True)
    whole = _node_round(tiny_bert, tmp_path, "state-b", cache=False)
    (kept,) = (tmp_path / "state-a" / CACHE_DIR).glob("*.npz")
    assert kept.name.startswith(cached["setup"].data.sha256())
    assert not (tmp_path / "state-b" / CACHE_DIR).exists()
    # DP accounting is unchanged: the same records, sampling and steps
    assert cached["charge"] == whole["charge"]
    for name, value in whole["weights"].items():
        np.testing.assert_allclose(cached["weights"][name], value, rtol=1e-4, atol=1e-5)
    # the next round reads the cache; a damaged cache is recomputed, not trusted
    modified = kept.stat().st_mtime_ns
    _node_round(tiny_bert, tmp_path, "state-a", cache=True, server_round=2)
    assert kept.stat().st_mtime_ns == modified
    kept.write_bytes(b"not a cache")
    again = _node_round(tiny_bert, tmp_path, "state-a", cache=True, server_round=3)
    assert kept.stat().st_size > 100 and again["weights"].keys() == whole["weights"].keys()


def test_a_cache_of_data_the_node_no_longer_holds_is_removed(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from client.encoder_cache import CACHE_DIR

    stale = tmp_path / "state" / CACHE_DIR / f"{'0' * 64}-{'1' * 32}.npz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old data's outputs")
    _node_round(tiny_bert, tmp_path, "state", cache=True)
    assert not stale.exists()
    assert len(list(stale.parent.glob("*.npz"))) == 1


def test_encoder_cache_in_the_node_config_must_be_a_boolean() -> None:
    from common.protocol import NodeConfig, NodeConfigError

    with pytest.raises(NodeConfigError, match="encoder-cache must be true or false, got 'no'"):
        NodeConfig.from_mapping({"institution": "u", "data-dir": "/d", "encoder-cache": "no"})
    node = NodeConfig.from_mapping({"institution": "u", "data-dir": "/d", "encoder-cache": False})
    assert not node.encoder_cache and "encoder-cache=false" in node.to_flag()


def test_the_server_scores_the_top_on_cached_validation_outputs_as_the_whole_model(
    tiny_bert: Path,
) -> None:
    from common.bert_top import scoring_view
    from common.training import evaluate

    model = _model(tiny_bert, 1)
    encoded = encode(load_tokenizer(str(tiny_bert)), text_data(), 24)
    scorer, cached = scoring_view(model, encoded)
    assert scorer is not model and len(cached) == len(encoded)
    whole, top = evaluate(model, encoded), evaluate(scorer, cached)
    assert top.accuracy == whole.accuracy
    assert top.loss == pytest.approx(whole.loss, rel=1e-5)
    lora = _model(tiny_bert, 0, lora_rank=2)
    assert scoring_view(lora, encoded) == (lora, encoded)  # nothing frozen to cache

"""The BERT path: frozen base, trainable part on the wire, DP-SGD on real BERT modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.arrays import arrays_to_bytes
from common.bert import BertError, encode, load_tokenizer, resolve_base_model
from common.dp import DPPlan
from common.model import build_model, frozen_sha256, full_arrays, get_arrays, set_arrays
from common.policy import ModelConfig
from common.text import TextData
from common.training import local_sgd, make_loader, train, train_private
from tests.support.bert_data import LABELS, bert_config, text_data


def _frozen_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def _dp_epoch(model: torch.nn.Module, examples: object, mode: str, batch: int = 4) -> None:
    loader = make_loader(examples, batch, shuffle=False)  # type: ignore[arg-type]
    steps = len(loader)
    train_private(
        model,
        loader,
        local_sgd(model, 0.5, 0.0),
        epochs=1,
        plan=DPPlan(0.5, 1.0 / steps, steps),
        max_grad_norm=1.0,
        grad_sample_mode=mode,
        accountant="rdp",
        history=[],
    )


def test_the_policy_chooses_what_trains(tiny_bert: Path) -> None:
    default = set(get_arrays(build_model(bert_config(tiny_bert), seed=0)))
    assert default and all(".pooler." in n or ".classifier." in n for n in default)
    one = set(get_arrays(build_model(bert_config(tiny_bert, train_layers=1), seed=0)))
    assert one - default and all(".encoder.layer.1." in n for n in one - default)
    assert not any(".embeddings." in n or ".encoder.layer.0." in n for n in one)
    two = set(get_arrays(build_model(bert_config(tiny_bert, train_layers=2), seed=0)))
    assert any(".encoder.layer.0." in n for n in two)
    assert not any(".embeddings." in n for n in two)  # never: Opacus issue 841
    with pytest.raises(BertError, match=r"train-layers is 3 but .* has 2 layers"):
        build_model(bert_config(tiny_bert, train_layers=3), seed=0)


def test_trainable_state_round_trips_and_frozen_weights_never_change(tiny_bert: Path) -> None:
    checkpoint = tiny_bert
    server = build_model(bert_config(checkpoint, train_layers=1), seed=0)
    base = frozen_sha256(server)
    sent = get_arrays(server)  # what the server sends: the trainable part only
    client = build_model(bert_config(checkpoint, train_layers=1), seed=0)
    assert frozen_sha256(client) == base  # same checkpoint, same frozen weights
    set_arrays(client, sent)
    frozen_before = _frozen_state(client)
    tokenizer = load_tokenizer(str(checkpoint))
    _dp_epoch(client, encode(tokenizer, text_data(), 24), "hooks")
    for name, value in _frozen_state(client).items():
        assert torch.equal(value, frozen_before[name]), name
    returned = get_arrays(client)
    assert set(returned) == set(sent)
    assert any(not np.array_equal(returned[n], sent[n]) for n in sent)  # it trained
    set_arrays(server, returned)  # the server merges the update into its full model
    assert all(np.array_equal(get_arrays(server)[n], returned[n]) for n in returned)
    assert frozen_sha256(server) == base
    # A full-model payload is refused: frozen weights never travel.
    with pytest.raises(ValueError, match="unexpected"):
        set_arrays(server, full_arrays(server))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_dp_step_on_bert_with_batches_above_one(tiny_bert: Path, mode: str) -> None:
    """Opacus issue 841 (position embeddings get a batch-1 grad sample) stays away."""
    checkpoint = tiny_bert
    model = build_model(bert_config(checkpoint, train_layers=2), seed=0)
    before = get_arrays(model)
    _dp_epoch(model, encode(load_tokenizer(str(checkpoint)), text_data(), 24), mode, batch=4)
    after = get_arrays(model)
    assert all(np.isfinite(v).all() for v in after.values())
    assert any(not np.array_equal(after[n], before[n]) for n in before)


def test_over_long_texts_are_truncated_not_fatal(tiny_bert: Path) -> None:
    checkpoint = tiny_bert
    long = TextData(("word " * 5000, "short"), np.array([0, 1]), LABELS)
    encoded = encode(load_tokenizer(str(checkpoint)), long, 24)
    assert encoded.input_ids.shape == (2, 24) and encoded.attention_mask[0].sum() == 24
    assert encoded.attention_mask[1].sum() < 24  # padded
    model = build_model(bert_config(checkpoint), seed=0)
    train(model, make_loader(encoded, 2, shuffle=False), local_sgd(model, 0.1, 0.0), 1)


def test_lora_trains_adapters_and_classifier_only(tiny_bert: Path) -> None:
    checkpoint = tiny_bert
    model = build_model(bert_config(checkpoint, lora_rank=4), seed=0)
    names = set(get_arrays(model))
    assert names and all("lora_" in n or "classifier" in n for n in names)
    _dp_epoch(model, encode(load_tokenizer(str(checkpoint)), text_data(), 24), "hooks")


def test_missing_or_non_bert_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BertError, match="cannot load a classifier from"):
        build_model(bert_config(tmp_path / "empty"), seed=0)
    afile = tmp_path / "weights.bin"
    afile.write_bytes(b"x")
    with pytest.raises(BertError, match="must be a folder, not a file"):
        resolve_base_model(str(afile))
    with pytest.raises(BertError, match="cannot load a classifier"):
        build_model(bert_config("no-such-org/no-such-model"), seed=0)


def test_packaged_minilm_is_the_default_and_frozen_weights_survive_a_dp_step() -> None:
    config = ModelConfig(name="bert", num_classes=3, max_length=32)
    model = build_model(config, seed=0)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    encoded = encode(load_tokenizer(""), text_data(), 32)
    logits = model(*encoded.tensors()[:2])
    assert logits.shape == (8, 3)
    frozen_before = _frozen_state(model)
    _dp_epoch(model, encoded, "hooks", batch=4)
    for name, value in _frozen_state(model).items():
        assert torch.equal(value, frozen_before[name]), name
    ratio = len(arrays_to_bytes(get_arrays(model))) / len(arrays_to_bytes(full_arrays(model)))
    assert ratio <= 0.10


def test_a_client_refuses_a_round_for_another_base_model(tiny_bert: Path, tmp_path: Path) -> None:
    from client.task import ClientSetup, train_round
    from common.policy import Policy, PolicyError
    from common.protocol import TrainConfig
    from common.text import write_jsonl

    write_jsonl(tmp_path / "data" / "d.jsonl", text_data(), "text", "label")
    policy = Policy.from_sections(
        {
            "model": {"name": "bert", "num-classes": 3, "base-model": str(tiny_bert)},
            "data": {"dataset": "stdlib-docs", "labels": ",".join(LABELS)},
            "privacy": {"dp": False},
            "training": {"local-epochs": 1, "batch-size": 4},
        }
    )
    setup = ClientSetup.from_configs(
        policy.to_run_config(), {"institution": "u", "data-dir": str(tmp_path / "data")}
    )
    assert setup.examples.input_ids.shape == (8, policy.model.max_length)  # type: ignore[attr-defined]
    model = build_model(policy.model, policy.federation.seed)
    weights, base = get_arrays(model), frozen_sha256(model)
    outcome = train_round(setup, weights, TrainConfig(1, base_sha256=base))
    assert set(outcome.weights) == set(weights)
    with pytest.raises(PolicyError, match=r"frozen base model here .* is not the server's"):
        train_round(setup, weights, TrainConfig(2, base_sha256="0" * 64))

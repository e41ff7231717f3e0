import itertools
import math
import re
from pathlib import Path

import pytest
import tomllib

from common.policy import Policy, PolicyError, TrainingConfig


def test_defaults_round_trip_through_toml_and_run_config(tmp_path: Path) -> None:
    policy = Policy()
    path = tmp_path / "policy.toml"
    path.write_text(policy.to_toml())
    assert Policy.load(path) == policy
    assert Policy.from_run_config(policy.to_run_config()) == policy


def test_policy_file_values_reach_the_dataclasses(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "[federation]\nrounds = 4\nmin-nodes = 2\n"
        "[training]\nlearning-rate = 1\nbatch-size = 16\n"
        "[data]\npartition = 'iid'\n"
    )
    policy = Policy.load(path)
    assert policy.federation.rounds == 4
    assert policy.federation.min_nodes == 2
    assert policy.training.learning_rate == 1.0 and isinstance(policy.training.learning_rate, float)
    assert policy.training.batch_size == 16
    assert policy.data.partition == "iid"
    assert policy.model.name == "cnn"  # untouched defaults stay


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("federation", "rounds", 0, "'federation.rounds' must be an integer from 1 to 10000"),
        ("model", "activation", "gelu", "'model.activation' must be one of: tanh, relu"),
        (
            "training",
            "lr-schedule",
            "step",
            "'training.lr-schedule' must be one of: constant, cosine",
        ),
        ("federation", "rounds", "5", "'federation.rounds' must be an integer"),
        ("federation", "rounds", 2.5, "'federation.rounds' must be an integer"),
        ("federation", "min-nodes", 0, "'federation.min-nodes' must be an integer >= 1"),
        (
            "federation",
            "fraction-train",
            0.0,
            "'federation.fraction-train' must be a number in (0, 1]",
        ),
        (
            "federation",
            "fraction-evaluate",
            1.5,
            "'federation.fraction-evaluate' must be a number in [0, 1]",
        ),
        (
            "federation",
            "round-timeout",
            -1.0,
            "'federation.round-timeout' must be a number of seconds > 0",
        ),
        (
            "federation",
            "poll-interval",
            0.0,
            "'federation.poll-interval' must be a number of seconds from 0.01 to 10",
        ),
        ("federation", "seed", -1, "'federation.seed' must be an integer >= 0"),
        ("federation", "seed", True, "'federation.seed' must be an integer"),
        ("model", "name", "resnet", "'model.name' must be one of: cnn"),
        ("model", "num-classes", 1, "'model.num-classes' must be an integer from 2"),
        ("model", "image-size", 2, "'model.image-size' must be an integer from 4 to 512"),
        (
            "training",
            "local-epochs",
            0,
            "'training.local-epochs' must be an integer from 1 to 1000",
        ),
        ("training", "batch-size", 0, "'training.batch-size' must be an integer from 1 to 65536"),
        ("training", "learning-rate", 0.0, "'training.learning-rate' must be a number in (0, 10]"),
        (
            "training",
            "learning-rate",
            float("nan"),
            "'training.learning-rate' must be a number in (0, 10]",
        ),
        ("training", "momentum", 1.0, "'training.momentum' must be a number in [0, 1)"),
        ("data", "dataset", "mnist", "'data.dataset' must be one of: digits"),
        ("data", "partition", "skewed", "'data.partition' must be one of: iid, non-iid"),
        ("data", "dirichlet-alpha", 0.0, "'data.dirichlet-alpha' must be a number in (0, 1e6]"),
        (
            "data",
            "validation-fraction",
            1.0,
            "'data.validation-fraction' must be a number in (0, 1)",
        ),
        ("data", "test-fraction", 0.0, "'data.test-fraction' must be a number in (0, 1)"),
        ("model", "base-model", 5, "'model.base-model' must be a string"),
    ],
)
def test_each_bad_value_names_its_key(section: str, key: str, value: object, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_sections({section: {key: value}})
    assert message in str(info.value)


def test_fractions_must_leave_training_data() -> None:
    with pytest.raises(PolicyError, match="at least 10% for training"):
        Policy.from_sections({"data": {"validation-fraction": 0.5, "test-fraction": 0.45}})


def test_unknown_section_and_key_are_named() -> None:
    with pytest.raises(PolicyError, match=r"unknown policy section '\[licence\]'"):
        Policy.from_sections({"licence": {"spdx": "CC-BY-4.0"}})
    with pytest.raises(
        PolicyError, match=re.escape("unknown policy key 'training.epochs'; keys allowed in")
    ):
        Policy.from_sections({"training": {"epochs": 3}})
    with pytest.raises(PolicyError, match="must be a table"):
        Policy.from_sections({"training": 3})
    with pytest.raises(PolicyError, match=re.escape("not of the form 'section.key'")):
        Policy.from_run_config({"rounds": 3})


def test_unreadable_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read policy file .*missing.toml"):
        Policy.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nrounds = 3")
    with pytest.raises(PolicyError, match=re.escape("bad.toml is not valid TOML")):
        Policy.load(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match=re.escape("binary.toml is not UTF-8")):
        Policy.load(binary)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[training]\nbatch-size = 0\n")
    with pytest.raises(PolicyError, match=r"wrong.toml: policy key 'training.batch-size'"):
        Policy.load(wrong)


def test_hash_follows_every_hyper_parameter() -> None:
    base = Policy()
    assert base.sha256() == Policy.from_run_config(base.to_run_config()).sha256()
    changed = Policy.from_sections({"training": {"learning-rate": 0.01}})
    assert changed.sha256() != base.sha256()
    assert len(base.sha256()) == 64


def test_deploy_settings_are_not_policy_and_old_keys_say_where_they_went() -> None:
    with pytest.raises(
        PolicyError, match=r"\[deploy\] section is the operator's own .*deploy.toml"
    ):
        Policy.from_sections({"deploy": {"ledger-url": "sqlite:///x.db"}})
    with pytest.raises(PolicyError, match=r"'deploy.ledger-url'|deploy"):
        Policy.from_run_config({"deploy.ledger-url": "postgresql://u:secret@db/x"})
    with pytest.raises(
        PolicyError, match=re.escape("'model.checkpoint' is now 'model.base-model'")
    ):
        Policy.from_sections({"model": {"checkpoint": "/models/minilm"}})
    assert not any(key.startswith("deploy.") for key in Policy().to_run_config())


def test_a_policy_recorded_by_an_older_version_still_loads() -> None:
    """Runs recorded before v7 carry [deploy] and model.checkpoint in their policy."""
    recorded = Policy().to_toml().replace('base-model = ""', 'checkpoint = "/m"')
    recorded += '[deploy]\nledger-url = "sqlite:///x.db"\ncheckpoint-dir = "/ckpt"\n'
    with pytest.raises(PolicyError):  # a policy file with them is refused...
        Policy.from_sections(tomllib.loads(recorded))
    # ...but what a ledger recorded is read as it was meant
    assert Policy.from_recorded(recorded).model.base_model == "/m"


def test_overrides_are_validated_and_name_their_source() -> None:
    policy = Policy().with_overrides(
        {"federation.rounds": 3, "federation.seed": None, "privacy.epsilon": 2.5}
    )
    assert (policy.federation.rounds, policy.federation.seed, policy.privacy.epsilon) == (
        3,
        42,
        2.5,
    )
    with pytest.raises(PolicyError, match=r"'federation.rounds' must be .* \(from the CLI\)"):
        Policy().with_overrides({"federation.rounds": 0}, source="the CLI")
    with pytest.raises(PolicyError, match="'rounds' is not a policy key"):
        Policy().with_overrides({"rounds": 3})
    with pytest.raises(PolicyError, match=re.escape("unknown policy key 'training.epochs'")):
        Policy().with_overrides({"training.epochs": 3})


def test_privacy_defaults_are_dp_on_with_epsilon_8() -> None:
    privacy = Policy().privacy
    assert (privacy.dp, privacy.epsilon, privacy.delta) == (True, 8.0, 1e-5)
    assert (privacy.accountant, privacy.grad_sample_mode, privacy.noise_multiplier) == (
        "prv",
        "hooks",
        0.0,
    )
    off = Policy.from_sections({"privacy": {"dp": False}})
    assert off.privacy.dp is False and off.sha256() != Policy().sha256()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epsilon", 0, "'privacy.epsilon' must be a number in \\(0, 1000\\]"),
        ("epsilon", -1.0, "'privacy.epsilon' must be a number in"),
        ("delta", 0.5, "'privacy.delta' must be a number in \\(0, 0.1\\)"),
        ("delta", 0, "'privacy.delta' must be"),
        ("max-grad-norm", 0.0, "'privacy.max-grad-norm' must be a number > 0"),
        ("noise-multiplier", -0.5, "'privacy.noise-multiplier' must be 0 \\(derive it"),
        ("accountant", "gdp", "'privacy.accountant' must be one of: rdp, prv"),
        (
            "grad-sample-mode",
            "functorch",
            "'privacy.grad-sample-mode' must be one of: hooks, ghost",
        ),
        ("dp", "no", "'privacy.dp' must be true or false"),
    ],
)
def test_bad_privacy_values_are_named(key: str, value: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_sections({"privacy": {key: value}})


def test_cosine_schedule_decays_the_learning_rate_over_the_planned_rounds() -> None:
    cosine = TrainingConfig(learning_rate=0.2, lr_schedule="cosine")
    rates = [cosine.learning_rate_at(r, 8) for r in range(1, 9)]
    assert rates[0] == pytest.approx(0.2)
    # r = 5 of 8 is half-way: 0.1 + 0.9 * (1 + cos(pi / 2)) / 2 = 0.55 of the start.
    assert rates[4] == pytest.approx(0.2 * 0.55)
    assert rates[-1] == pytest.approx(0.2 * (0.1 + 0.9 * (1 + math.cos(math.pi * 7 / 8)) / 2))
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert cosine.learning_rate_at(20, 8) == pytest.approx(0.02)  # past the plan: the floor
    constant = TrainingConfig(learning_rate=0.2, lr_schedule="constant")
    assert {constant.learning_rate_at(r, 8) for r in range(1, 9)} == {0.2}


def test_bert_policies_need_text_data_and_a_label_per_class() -> None:
    bert = {"model": {"name": "bert", "num-classes": 2}, "data": {"dataset": "stdlib-docs"}}
    with pytest.raises(
        PolicyError, match=re.escape("'data.labels' names 0 labels but 'model.num-classes' is 2")
    ):
        Policy.from_sections(bert)
    with pytest.raises(
        PolicyError, match=re.escape("'data.labels' must be distinct, non-empty names")
    ):
        Policy.from_sections({**bert, "data": {"dataset": "stdlib-docs", "labels": "a,,b"}})
    with pytest.raises(PolicyError, match=re.escape("'data.labels' must be distinct")):
        Policy.from_sections({**bert, "data": {"dataset": "stdlib-docs", "labels": "a, a"}})
    with pytest.raises(PolicyError, match="the bert model trains on text"):
        Policy.from_sections({"model": {"name": "bert", "num-classes": 2}})
    ok = Policy.from_sections({**bert, "data": {"dataset": "stdlib-docs", "labels": " a , b "}})
    assert ok.data.label_names == ("a", "b")
    assert Policy.from_run_config(ok.to_run_config()) == ok

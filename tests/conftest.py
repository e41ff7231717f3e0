"""Shared fixtures: every ledger backend (a SQLite file and the real PostgreSQL server).

Tests that need a tool from outside Python go through the plugin
:mod:`tests.support.tools` (skipped where the tool is missing, failed where
``FEDCOMMONS_REQUIRE`` requires it).

``url`` is parametrised over both backends, so a test that takes it (or
``ledger``) runs once on each; the PostgreSQL run is marked ``postgres``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from ledger import Ledger

# A test that needs a missing tool: skipped, or failed in CI.
pytest_plugins = ["tests.support.tools"]

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    name = f"fedcommons_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as err:  # the dev and CI machines run one; say so loudly
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required for ledger tests: {err}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'ledger.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    """A migrated ledger on each backend, closed afterwards."""
    opened = Ledger(url)
    yield opened
    opened.close()


def make_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide ``BertModel`` saved like MiniLM's checkpoint, with MiniLM's tokenizer.

    Built in code (no download); the tokenizer files come from the packaged
    all-MiniLM-L6-v2, so the vocabulary is real.
    """
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from common.bert import resolve_base_model

    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)  # no classifier head, like MiniLM
    packaged = Path(resolve_base_model(""))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(packaged / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny BERT checkpoint folder, built once per test session."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))

"""Shared fixtures: a scratch PostgreSQL database and small data files."""

from __future__ import annotations

import uuid
from pathlib import Path
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

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


def make_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide ``BertModel`` saved like MiniLM's checkpoint, with MiniLM's tokenizer.

    Built in code (no download); the tokenizer files come from the packaged
    all-MiniLM-L6-v2, so the vocabulary is real.
    """
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from common.bert import resolve_checkpoint

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
    packaged = Path(resolve_checkpoint(""))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(packaged / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny BERT checkpoint folder, built once per test session."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
